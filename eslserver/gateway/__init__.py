"""The gateway process: MQTT jobs in, radio links out.

Modules, one concept each (import what you need; this package imports nothing itself, so
``eslserver.gateway.events`` stays cheap for the server):

- `eslserver.gateway.events`: the JSON events a gateway publishes (`Ack`, `Nack`, `Checkin`,
  `Status`, `parse_event`);
- `eslserver.gateway.conversation`: a conversation with one label over a `Link`, and
  `run_job`, one job envelope (`firmware_proto.envelope`) carried out to its ack or nack;
- `eslserver.gateway.spool`: the durable job spool (SQLite, WAL);
- `eslserver.gateway.bridge`: `Gateway`, MQTT ↔ radio, and `open_radio`;
- `eslserver.gateway.links`: the radios (`loopback` for ``esl simulate``, `ble` through bleak).
"""
