"""unetsep.benchmarks: latency per frame and separation quality."""
