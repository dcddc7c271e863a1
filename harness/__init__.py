"""muonlab.harness: model, data, training runs and sweeps; the `muonlab` CLI."""
