"""An independent Biscuit client for tests/biscuit.rs: PyPI biscuit-python
(module biscuit_auth), not our code.

    biscuit_client.py attenuate PUBLIC_KEY DATALOG [PARAMS_JSON] < token
        Appends one block holding DATALOG (checks, facts, rules) to the
        token read from stdin and prints the new token. No private key is
        used: attenuation is offline. PUBLIC_KEY (`ed25519/<hex>`, the
        tenant's published root key) is needed only because biscuit-python
        0.4 can serialize a token it has parsed with signature checking
        (UnverifiedBiscuit has no to_base64). PARAMS_JSON maps parameter
        names of DATALOG to values: numbers and strings as such, and
        {"unix": N} for a date.

    biscuit_client.py inspect PUBLIC_KEY < token
        Prints {"root_key_id", "blocks", "revocation_ids"} as JSON.
"""

import datetime
import json
import sys

import biscuit_auth as b


def load(public_key):
    token = sys.stdin.read().strip()
    root = b.PublicKey(public_key)
    return b.Biscuit.from_base64(token, lambda _root_key_id: root)


def value(v):
    if isinstance(v, dict) and "unix" in v:
        return datetime.datetime.fromtimestamp(v["unix"], tz=datetime.timezone.utc)
    return v


def main(argv):
    if len(argv) >= 3 and argv[0] == "attenuate":
        params = json.loads(argv[3]) if len(argv) > 3 else {}
        token = load(argv[1])
        block = b.BlockBuilder(argv[2], {k: value(v) for k, v in params.items()})
        print(token.append(block).to_base64())
        return 0
    if len(argv) == 2 and argv[0] == "inspect":
        token = load(argv[1])
        unverified = b.UnverifiedBiscuit.from_base64(token.to_base64())
        print(
            json.dumps(
                {
                    "root_key_id": unverified.root_key_id(),
                    "blocks": [token.block_source(i) for i in range(token.block_count())],
                    "revocation_ids": token.revocation_ids,
                }
            )
        )
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
