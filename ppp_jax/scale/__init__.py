"""Scale tooling: ahead-of-time compiles of the train step and the engine for TPU topologies,
and multi-host runs."""
