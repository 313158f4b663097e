"""The storage layer: one module per table, owning every statement on it (the engine is `eslserver.db`)."""
