"""Reading a BIDS / fMRIPrep-style study: where its files are (:mod:`.layout`), reading them
once and hashed (:mod:`.reading`, :mod:`.nifti`), QC numbers (:mod:`.qc`), the checks on a
run (:mod:`.validate`), the clinical table (:mod:`.clinical`), the study protocol that
declares the study's vocabulary (:mod:`.protocol`) and what ``kp validate`` reports
(:mod:`.study_check`). Every problem with a file raises :class:`.errors.StudyDataError`."""
