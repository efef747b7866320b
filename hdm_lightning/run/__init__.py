"""The parts of an explain run: the plan, one batch, the writer, the W&B record (joined by ``explain_run``)."""
