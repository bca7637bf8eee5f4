"""`kvfleet secrets`: fresh credentials for a deployment (compose .env or a k8s Secret).

Nothing secret is committed with the deploy files; they read these values. Each run makes new
ones: the fleet token, one Redis password per service (and admin), the Redis ACL file with
their digests, and a gateway API key (printed once to stderr; only its digest is deployed).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


def _material() -> tuple[dict[str, str], str]:
    import secrets as pysecrets

    from kvfleet.common.redis_server import acl_lines, new_passwords
    from kvfleet.services.gateway.api_keys import hash_key, new_key

    passwords = new_passwords()
    key = new_key()
    values = {
        "fleet-token": pysecrets.token_urlsafe(32),
        "api-key-hashes": json.dumps([hash_key(key)]),
        "users.acl": "\n".join(acl_lines(passwords)) + "\n",
        **{f"redis-{user}-password": pw for user, pw in passwords.items()},
    }
    return values, key


@app.command()
def env() -> None:
    """A .env file for deploy/docker-compose.yml (save it as deploy/.env, mode 600); the ACL
    file goes beside it as deploy/redis-users.acl (this prints both, the ACL after a line
    '# redis-users.acl')."""
    values, key = _material()
    for name, value in values.items():
        if name != "users.acl":
            var = "KVFLEET_" + name.upper().replace("-", "_").replace(".", "_")
            typer.echo(f"{var}='{value}'")
    typer.echo("# redis-users.acl")
    typer.echo(values["users.acl"], nl=False)
    typer.echo(f"API key for clients (shown once): {key}", err=True)


@app.command()
def k8s(namespace: Annotated[str, typer.Option()] = "kvfleet") -> None:
    """The Secret deploy/k8s reads (kubectl apply -f -)."""
    import yaml

    values, key = _material()
    doc = {"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "kvfleet-secrets", "namespace": namespace},
           "type": "Opaque", "stringData": values}
    typer.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
    typer.echo(f"API key for clients (shown once): {key}", err=True)
