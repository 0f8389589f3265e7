"""The embedded amqtt broker carries MQTT 3.1.1 QoS 1 traffic between real paho clients."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from server.broker import EmbeddedBroker
from tests.services import free_port


def test_embedded_broker_pub_sub_qos1():
    port = free_port()
    got: list[bytes] = []
    done = threading.Event()
    with EmbeddedBroker(port=port):
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sub", protocol=mqtt.MQTTv311)
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()

        def on_message(_c, _u, msg):
            got.append(msg.payload)
            if len(got) == 20:
                done.set()

        sub.on_message = on_message
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        sub.subscribe("scanemon/v1/devices/+/scans", qos=1)
        assert subscribed.wait(5)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv311)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        for i in range(20):
            pub.publish("scanemon/v1/devices/d1/scans", f"m{i}".encode(), qos=1).wait_for_publish(5)
        assert done.wait(10)
        pub.loop_stop()
        sub.loop_stop()
    assert got == [f"m{i}".encode() for i in range(20)]
