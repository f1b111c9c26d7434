"""What the tests and the benchmarks both stand up: the service's processes (`processes`) and a network fault
(`proxy`)."""
