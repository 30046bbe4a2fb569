#!/usr/bin/env python3
"""Calls souk's Rank knowing nothing but the address: the message types come from the
server's gRPC reflection service, so no stubs are generated.

    pip install grpcio grpcio-reflection
    python3 scripts/rank_via_reflection.py 127.0.0.1:50053 [USER] [QUERY]
"""
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main():
    addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50053"
    user = sys.argv[2] if len(sys.argv) > 2 else ""
    query = sys.argv[3] if len(sys.argv) > 3 else ""
    channel = grpc.insecure_channel(addr)
    database = ProtoReflectionDescriptorDatabase(channel)
    print("services:", ", ".join(sorted(database.get_services())))
    pool = descriptor_pool.DescriptorPool(database)
    method = pool.FindServiceByName("souk.ranker.v1.Ranker").FindMethodByName("Rank")
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    rank = channel.unary_unary(
        "/souk.ranker.v1.Ranker/Rank",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    response = rank(request_type(user_id=user, query=query, k=5, explain=True), timeout=10)
    if response.missing_signals:
        print("degraded, missing:", ", ".join(response.missing_signals))
    for i, item in enumerate(response.items, 1):
        print(f"{i}. {item.title} [{item.id}] score {item.score:.3f}")
        for reason in item.reasons:
            print(f"   - {reason}")


if __name__ == "__main__":
    main()
