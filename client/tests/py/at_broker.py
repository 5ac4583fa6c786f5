"""Runs a Python program unchanged against the broker in AMQP_URL.

The seed's rpc_client.py and rpc_server.py hard-code localhost:5672; a test
against another broker (RabbitMQ 4 from scripts/rabbitmq4, on its own port)
runs them through this, which points pika's ConnectionParameters at that
broker before the program starts. Without AMQP_URL the program runs as is.

    python at_broker.py PROGRAM.py [ARGS...]
"""

import os
import runpy
import sys

import pika

url = os.environ.get("AMQP_URL")
if url:
    broker = pika.URLParameters(url.split(",")[0])
    Original = pika.ConnectionParameters

    class AtBroker(Original):
        def __init__(self, *args, **kwargs):
            kwargs["host"] = broker.host
            kwargs["port"] = broker.port
            kwargs.setdefault("credentials", broker.credentials)
            kwargs.setdefault("virtual_host", broker.virtual_host)
            super().__init__(*args, **kwargs)

    pika.ConnectionParameters = AtBroker

program = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(program, run_name="__main__")
