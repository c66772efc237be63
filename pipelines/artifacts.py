"""Names shared by the job that writes a run's artifacts and the CLI that reads them, so neither imports the other.

A stage's output directory is committed by MARKER, written last with the stage's metrics; STATE_DIR inside it
(training checkpoints) survives a retry. The driver's last stdout line starts with SUMMARY_PREFIX and carries the
run's outcome as JSON.
"""

MARKER = "_SUCCESS"
STATE_DIR = "_state"
SUMMARY_PREFIX = "LLMCTL_SUMMARY "
