"""Reading a BIDS / fMRIPrep-style study: where its files are (:mod:`.layout`), reading them
once and hashed (:mod:`.reading`, :mod:`.nifti`), QC numbers (:mod:`.qc`), the checks on a
run (:mod:`.validate`), the clinical table (:mod:`.clinical`) and the study's vocabulary
(:mod:`.vocabulary`). Every problem with a file raises :class:`.errors.StudyDataError`."""
