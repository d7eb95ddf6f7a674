"""pt2serve-client: push weights to a running pt2serve from a training loop.

    from pt2serve_client import Client
    client = Client("127.0.0.1:8003", token="...")
    client.push("mlp", model.state_dict(), version="step-1000", swap=True)

See sdk/python/README.md for the key mapping and the error rules.
"""

from pt2serve_client.client import (Client, PushError, PushResult, ReplicaOutcome, RolloutError,
                                    map_keys, rollout)

__all__ = ["Client", "PushError", "PushResult", "ReplicaOutcome", "RolloutError", "map_keys",
           "rollout"]
