"""Test and demo machinery production code never imports: traffic endpoints in namespaces,
traffic probes, and the sample state every category is exercised with."""
