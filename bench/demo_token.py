"""Print shell exports for the JWT benchmark: a fresh demo key pair's JWKS path and alice's token."""
import tempfile

from fastgate.demo.identity import DemoIdentity

identity = DemoIdentity(tempfile.mkdtemp(prefix="fastgate-bench-idp-"))
print(f"export FASTGATE_BENCH_JWKS='{identity.jwks_path}'")
print(f"export FASTGATE_BENCH_TOKEN='{identity.token('alice')}'")
