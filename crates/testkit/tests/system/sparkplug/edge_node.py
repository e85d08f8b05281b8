"""A Sparkplug B edge node for the agent's end-to-end test, built on an
independent implementation of the payload (Eclipse Tahu's protobuf
definitions and helpers, as packaged by mqtt-spb-wrapper 2.1.2 on PyPI) and
paho-mqtt.

It births (NBIRTH with bdSeq and aliased metrics) before the agent is
listening, prints "born", waits for "go" on stdin, then sends alias-only NDATA
with seq numbers. On an NCMD "Node Control/Rebirth" it births again (seq 0,
same bdSeq), as the specification asks. Midway it sends the NDEATH of an
older session (another bdSeq), which a host must ignore. At the end it prints
one JSON line: the rebirths it was asked for and every data message it sent,
marked when it followed a rebirth.

    pip install paho-mqtt==1.6.1 mqtt-spb-wrapper==2.1.2
    python3 edge_node.py --port 1883 --group plant --node node1 --count 60
"""
import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from mqtt_spb_wrapper.spb_protobuf import sparkplug_b as spb
from mqtt_spb_wrapper.spb_protobuf.sparkplug_b_pb2 import Payload

BD_SEQ = 7


def now_ms():
    return int(time.time() * 1000)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--group", default="plant")
    ap.add_argument("--node", default="node1")
    ap.add_argument("--count", type=int, default=60)
    args = ap.parse_args()
    base = f"spBv1.0/{args.group}"
    state = {"seq": 0, "rebirths": 0}
    rebirth_asked = threading.Event()

    def next_seq():
        s = state["seq"]
        state["seq"] = (s + 1) % 256
        return s

    def birth(client):
        state["seq"] = 0
        p = Payload()
        p.timestamp = now_ms()
        p.seq = next_seq()
        spb.addMetric(p, "bdSeq", None, spb.MetricDataType.Int64, BD_SEQ, p.timestamp)
        spb.addMetric(p, "temp", 1, spb.MetricDataType.Double, 20.0, p.timestamp)
        spb.addMetric(p, "rpm", 2, spb.MetricDataType.Int32, 1000, p.timestamp)
        client.publish(f"{base}/NBIRTH/{args.node}", p.SerializeToString(), qos=0).wait_for_publish()

    def death(bd_seq):
        p = Payload()
        p.timestamp = now_ms()
        spb.addMetric(p, "bdSeq", None, spb.MetricDataType.Int64, bd_seq, p.timestamp)
        return p.SerializeToString()

    def on_message(client, _userdata, msg):
        p = Payload()
        p.ParseFromString(msg.payload)
        for m in p.metrics:
            if m.name == "Node Control/Rebirth" and m.boolean_value:
                # Answered by the sending loop (this is paho's network thread).
                state["rebirths"] += 1
                rebirth_asked.set()

    client = mqtt.Client(client_id=f"spb-{args.node}", clean_session=True)
    client.will_set(f"{base}/NDEATH/{args.node}", death(BD_SEQ), qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, keepalive=30)
    client.subscribe(f"{base}/NCMD/{args.node}", qos=1)
    client.loop_start()
    time.sleep(0.3)
    birth(client)
    print("born", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    sent = []
    rebirths_done = 0
    t0 = now_ms()
    for i in range(args.count):
        if i == args.count // 2:
            # The will of an older session, delivered late.
            client.publish(f"{base}/NDEATH/{args.node}", death(BD_SEQ - 1), qos=0).wait_for_publish()
        if rebirth_asked.is_set():
            rebirth_asked.clear()
            birth(client)
            rebirths_done += 1
        ts = t0 + i * 1000
        temp, rpm = 20.0 + (i % 7) * 0.5, 1000 + i
        p = Payload()
        p.timestamp = ts
        p.seq = next_seq()
        spb.addMetric(p, None, 1, spb.MetricDataType.Double, temp, ts)
        spb.addMetric(p, None, 2, spb.MetricDataType.Int32, rpm, ts)
        client.publish(f"{base}/NDATA/{args.node}", p.SerializeToString(), qos=0).wait_for_publish()
        # Named by the host once a rebirth answered its request.
        sent.append({"ts": ts, "temp": temp, "rpm": rpm, "after_rebirth": rebirths_done > 0})
        time.sleep(0.1)
    client.publish(f"{base}/NDEATH/{args.node}", death(BD_SEQ), qos=0).wait_for_publish()
    client.loop_stop()
    client.disconnect()
    print(json.dumps({"rebirths": state["rebirths"], "sent": sent}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
