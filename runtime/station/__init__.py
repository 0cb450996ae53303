"""The inspection station: triggered jobs on recipes, results to the line (OPC UA, MQTT), metrics."""
