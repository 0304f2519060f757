#!/usr/bin/env python3
"""A grpcurl stand-in smoke test of a running Tollgate, using only server reflection.

It walks the README's quick tour (account → application → group → model → key create,
list, Authorize and ExplainAuthorize, usage reports, balances and usage queries, the key
holder's own balance, disable, rotate, delete) with the same JSON bodies the README passes to
grpcurl, and checks each answer. No .proto files: every message type comes from reflection, as it does
for grpcurl, Postman and evans.

    pip install grpcio grpcio-reflection
    python3 scripts/smoke.py 127.0.0.1:50051 "$(cat .tollgate/admin-token)"
"""

import json
import sys
import time
import uuid

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


class Tollgate:
    def __init__(self, address, token):
        self.channel = grpc.insecure_channel(address)
        self.pool = DescriptorPool(ProtoReflectionDescriptorDatabase(self.channel))
        self.metadata = [("authorization", f"Bearer {token}")]

    def call(self, method, body, token=None):
        service_name, rpc = method.rsplit("/", 1)
        method_desc = self.pool.FindServiceByName(service_name).FindMethodByName(rpc)
        request_type = message_factory.GetMessageClass(method_desc.input_type)
        response_type = message_factory.GetMessageClass(method_desc.output_type)
        stub = self.channel.unary_unary(
            f"/{service_name}/{rpc}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        request = json_format.Parse(json.dumps(body), request_type())
        metadata = [("authorization", f"Bearer {token}")] if token else self.metadata
        response = stub(request, metadata=metadata, timeout=10)
        return json_format.MessageToDict(response)


def main():
    address, token = sys.argv[1], sys.argv[2]
    t = Tollgate(address, token)
    suffix = uuid.uuid4().hex[:8]
    account = f"acme-{suffix}"

    # The README's bodies, with ids made unique so the script can run against any server.
    t.call("tollgate.keys.v1.AccountService/CreateAccount",
           {"account_id": account, "account": {"display_name": "Acme Inc"}})
    app = t.call("tollgate.keys.v1.ApplicationService/CreateApplication",
                 {"parent": f"accounts/{account}", "application_id": "chatbot",
                  "application": {"display_name": "Chatbot"}})["application"]
    t.call("tollgate.keys.v1.GroupService/CreateGroup",
           {"group_id": f"pro-{suffix}",
            "group": {"display_name": "Pro", "price_multiplier": "0.8", "default_rpm_limit": 600}})
    model = f"gpt-4o-mini-{suffix}"
    t.call("tollgate.keys.v1.ModelService/CreateModel",
           {"model_id": model,
            "model": {"capability": "CAPABILITY_TEXT", "input_price": 75000, "output_price": 300000}})
    created = t.call("tollgate.keys.v1.KeyService/CreateKey", {
        "parent": f"accounts/{account}",
        "key": {
            "application": app["name"],
            "display_name": "Production",
            "group": f"groups/pro-{suffix}",
            "quota": 5000000,
            "daily_budget": 500000,
            "allowed_models": [model],
            "capabilities": ["CAPABILITY_TEXT"],
            "ip_allowlist": ["203.0.113.0/24", "2001:db8::/32"],
        },
        "expire_after": "2592000s",
        "request_id": f"create-production-key-{suffix}",
    })["created"]
    secret, key = created["secret"], created["key"]
    assert secret.startswith("sk-") and len(secret) == 45, secret
    listed = t.call("tollgate.keys.v1.KeyService/ListKeys",
                    {"parent": f"accounts/{account}", "status": "KEY_STATUS_ENABLED"})
    assert [k["name"] for k in listed["keys"]] == [key["name"]]
    assert secret not in json.dumps(listed)
    call = {"api_key": secret, "model": model, "capability": "CAPABILITY_TEXT",
            "client_ip": "203.0.113.7", "estimated_tokens": 1200, "request_id": f"req-{suffix}"}
    allowed = t.call("tollgate.authz.v1.AuthzService/Authorize", call)
    assert allowed["decision"] == "DECISION_ALLOW", allowed
    assert allowed["headroom"]["rpm"]["limit"] == "600", allowed
    assert int(allowed["headroom"]["quotaRemaining"]) < 5000000, "the call holds its estimated cost"
    # The gateway reports what the call used; metering charges it once, in the background.
    report = {"request_id": f"req-{suffix}", "key": key["name"], "model": model,
              "input_tokens": 1000, "output_tokens": 200, "outcome": "USAGE_OUTCOME_SUCCESS"}
    t.call("tollgate.metering.v1.MeteringService/RecordUsage", {"report": report})
    t.call("tollgate.metering.v1.MeteringService/RecordUsage", {"report": report})  # a retry
    for _ in range(100):
        usage = t.call("tollgate.metering.v1.MeteringService/ListUsage", {"parent": f"accounts/{account}"})
        if usage.get("records"):
            break
        time.sleep(0.1)
    # (1000 × 75,000 + 200 × 300,000) / 10^6 × 0.8 = 108 credits.
    assert [(r["requestId"], r["credits"]) for r in usage["records"]] == [(f"req-{suffix}", "108")], usage
    now = time.time()
    summary = t.call("tollgate.metering.v1.MeteringService/GetUsageSummary", {
        "scope": f"accounts/{account}", "granularity": "GRANULARITY_HOUR",
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600)),
        "end_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 60))})
    assert summary["totals"]["credits"] == "108", summary
    topped = t.call("tollgate.metering.v1.MeteringService/AddCredits",
                    {"account": f"accounts/{account}", "credits": 1000000, "reason": "welcome credit",
                     "request_id": f"topup-{suffix}"})["balance"]
    assert topped["balance"] == str(1000000 - 108), topped
    own = t.call("tollgate.metering.v1.KeyHolderService/GetKeyBalance", {"days": 7}, token=secret)
    assert own["quotaUsed"] == "108" and own["status"] == "KEY_STATUS_ENABLED", own
    outsider = dict(call, client_ip="198.51.100.1", request_id=f"req2-{suffix}")
    explained = t.call("tollgate.authz.v1.AuthzService/ExplainAuthorize", {"request": outsider})
    assert explained["reason"] == "DENY_REASON_IP_NOT_ALLOWED", explained
    disabled = t.call("tollgate.keys.v1.KeyService/UpdateKey",
                      {"key": {"name": key["name"], "enabled": False}, "update_mask": "enabled"})["key"]
    assert disabled["status"] == "KEY_STATUS_DISABLED", disabled
    denied = t.call("tollgate.authz.v1.AuthzService/Authorize", dict(call, request_id=f"req3-{suffix}"))
    assert denied["reason"] == "DENY_REASON_KEY_DISABLED", denied
    rotated = t.call("tollgate.keys.v1.KeyService/RotateKey",
                     {"name": key["name"], "grace_period": "3600s"})["created"]
    assert rotated["secret"] != secret and "previousSecretExpireTime" in rotated["key"]
    t.call("tollgate.keys.v1.KeyService/DeleteKey", {"name": key["name"]})
    events = t.call("tollgate.keys.v1.AuditService/ListAuditEvents", {"resource": key["name"]})["events"]
    assert [e["action"] for e in events] == ["DeleteKey", "RotateKey", "UpdateKey", "CreateKey"], events
    try:
        t.call("tollgate.keys.v1.KeyService/GetKey", {"name": key["name"]})
        raise AssertionError("a deleted key was found")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
    print(f"smoke test passed against {address}")


if __name__ == "__main__":
    main()
