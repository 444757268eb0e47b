"""`chat-keys`: make and list the CURVE key pairs of the parts.

    chat-keys new DIR NAME --role gateway|worker|publisher|broker
        writes DIR/NAME.key (public, mode 0644) and DIR/NAME.key_secret
        (secret, mode 0600); never overwrites a key
    chat-keys list DIR
        one line per public key file: name, role, public key

The role is written into both files' metadata (`role = "gateway"`); the
broker admits a key on a socket only if its role may use that socket.
"""

from __future__ import annotations

from pathlib import Path

import click

from stack.certs import ROLES, KeyFileError, load_public_key, public_key_files, write_key_pair


@click.group()
def main() -> None:
    """Make and list CURVE keys for the chat's broker, gateways, workers and publishers."""


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="gateway", show_default=True,
              help="Which broker sockets the key may use (broker: the broker's own key).")
def new(directory: Path, name: str, role: str) -> None:
    """Write a new key pair DIRECTORY/NAME.key and DIRECTORY/NAME.key_secret."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        public_path, secret_path = write_key_pair(directory, name, role)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{role} key {name}: public {public_path}, secret {secret_path} (keep it on this host)")


@main.command(name="list")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def list_keys(directory: Path) -> None:
    """Show the name, role and public key of every NAME.key file in DIRECTORY."""
    try:
        paths = public_key_files(directory)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    for path in paths:
        try:
            key = load_public_key(path)
        except KeyFileError as exc:
            click.echo(f"! {exc}", err=True)
            continue
        click.echo(f"{key.name:<24} {key.role or '-':<10} {key.public.decode()}")


if __name__ == "__main__":
    main()
