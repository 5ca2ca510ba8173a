"""The study's vocabulary: arms, sessions and which tasks have events (this trial's; issue 15
makes them a study protocol)."""

ARMS = ("ketamine", "midazolam")
SESSIONS = ("pre", "post")
# Tasks whose runs need an events file; any other task (rest) is task-free.
EVENT_TASKS = frozenset({"faces", "conflict"})
