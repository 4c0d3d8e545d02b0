"""Support for testing and benchmarking the operator without a cluster."""
