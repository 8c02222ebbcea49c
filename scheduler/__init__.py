"""The control plane: project reading, planning, run coordination, the scheduler daemon."""
