"""Real labelled text tasks for the attention-probe study (built offline)."""
