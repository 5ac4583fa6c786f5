"""A tutorial-pattern RPC caller and server in pika, on any queue.

The RabbitMQ tutorial's rpc_client.py and rpc_server.py hard-code
`rpc_queue`; these do the same thing on a queue given on the command line,
so interop tests can run in parallel:

    python3 pika_rpc.py call QUEUE N     # prints int(reply body)
    python3 pika_rpc.py serve QUEUE      # answers fib(int(body)) until killed
"""
import os
import sys
import uuid

import pika


def params():
    return pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))


def fib(n):
    if n == 0:
        return 0
    elif n == 1:
        return 1
    else:
        return fib(n - 1) + fib(n - 2)


def call(queue, n, timeout=30):
    connection = pika.BlockingConnection(params())
    channel = connection.channel()
    callback_queue = channel.queue_declare(queue="", exclusive=True).method.queue
    corr_id = str(uuid.uuid4())
    response = {}

    def on_response(ch, method, props, body):
        if props.correlation_id == corr_id:
            response["body"] = body

    channel.basic_consume(queue=callback_queue, on_message_callback=on_response, auto_ack=True)
    channel.basic_publish(
        exchange="",
        routing_key=queue,
        properties=pika.BasicProperties(reply_to=callback_queue, correlation_id=corr_id),
        body=str(n),
    )
    waited = 0.0
    while "body" not in response and waited < timeout:
        connection.process_data_events(time_limit=0.1)
        waited += 0.1
    connection.close()
    if "body" not in response:
        sys.exit("no reply within %ss" % timeout)
    print(int(response["body"]))


def serve(queue):
    connection = pika.BlockingConnection(params())
    channel = connection.channel()
    # Durable, as Warren declares it: RabbitMQ 4 deprecates (and can refuse)
    # the tutorial's transient queue.
    channel.queue_declare(queue=queue, durable=True)

    def on_request(ch, method, props, body):
        response = fib(int(body))
        ch.basic_publish(
            exchange="",
            routing_key=props.reply_to,
            properties=pika.BasicProperties(correlation_id=props.correlation_id),
            body=str(response),
        )
        ch.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue=queue, on_message_callback=on_request)
    channel.start_consuming()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "call":
        call(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(__doc__)
