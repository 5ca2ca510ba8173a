"""The study's vocabulary, defined once: arms and their coding, sessions, tasks and which tasks
have events (this trial's, until a study protocol declares them per study).

Every other module takes these names from here. The ``Literal`` types let settings declare a
choice of them (a typo then fails where the setting is made, naming the allowed values).
"""

from typing import Literal, get_args

Arm = Literal["ketamine", "midazolam"]
Session = Literal["pre", "post"]
Task = Literal["faces", "conflict", "rest"]

ARMS: tuple[Arm, ...] = get_args(Arm)
SESSIONS: tuple[str, ...] = get_args(Session)
TASKS: tuple[str, ...] = get_args(Task)
# Tasks whose runs need an events file, in TASKS order; any other task (rest) is task-free.
EVENT_TASKS: tuple[str, ...] = ("faces", "conflict")

# The active arm and its control; effect coding +½ / −½ (so an arm coefficient is the
# active − control difference, and a feature's own coefficient the average over both arms).
ACTIVE_ARM, CONTROL_ARM = ARMS
ARM_CODES: dict[str, float] = {ACTIVE_ARM: 0.5, CONTROL_ARM: -0.5}
