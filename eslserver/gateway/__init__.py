"""The gateway process: MQTT jobs in, radio links out."""
