"""Simulated labels and store radios, built on the label side of `firmware_proto`.

Modules, one concept each:

- `simulator.label`: `SimLabel`, one label (protocol session, screen, battery, LED, reboots);
- `simulator.store`: `SimStore`, many labels on one radio channel, one wake-up scheduler;
- `simulator.faults`: seeded, reproducible fault injection (`FaultConfig`);
- `simulator.battery`: the power model and `estimate_life_days`;
- `simulator.screen`: framebuffer → upright indices → PNG in the panel's colours;
- `simulator.links`: in-memory `Link` / `Radio` for tests (whole, byte-by-byte, lossy, delayed);
- `simulator.radio_server`: the loopback TCP store radio behind ``esl simulate``;
- `simulator.state`: the labels' flash (keys, counters, screens) in a file across restarts;
- (the gateway side of a conversation lives in `eslserver.gateway.conversation`);
- `simulator.snapshots`, `simulator.run`: PNG snapshots on change, the ``esl simulate`` runner.

Never imports `eslserver`: the simulator meets the server only over the radio interface.
"""
