"""`newsletter dkim ...`: signing keys and the DNS records that publish them."""

from __future__ import annotations

import contextlib
import enum
import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from newsletter.cli.common import err_console, user_errors
from newsletter.errors import InvalidInput

app = typer.Typer(no_args_is_help=True, help="DKIM signing keys and their DNS records.")


class Algorithm(enum.StrEnum):
    rsa = "rsa"
    ed25519 = "ed25519"


@app.command("keygen")
@user_errors
def keygen(
    selector: Annotated[
        str, typer.Option(help="The key's name in DNS, e.g. news2026 (a new one per key).")
    ],
    out: Annotated[Path, typer.Option(help="Where to write the private key (PEM, mode 0600).")],
    algorithm: Annotated[
        Algorithm,
        typer.Option(help="rsa (verified everywhere) or ed25519 (small and fast, a second key)."),
    ] = Algorithm.rsa,
    bits: Annotated[
        int | None, typer.Option(help="RSA key size: 2048 (default), 3072 or 4096.")
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(help="The signing domain. Default: NEWSLETTER_DKIM_DOMAIN, else From's."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key file.")] = False,
) -> None:
    """Write a new signing key and print the DNS TXT record that publishes it."""
    from newsletter.delivery.dkim import (
        check_selector,
        dns_record,
        generate_key,
        private_pem,
        record_name,
        zone_strings,
    )

    check_selector(selector)
    if bits is not None and algorithm is Algorithm.ed25519:
        raise InvalidInput("--bits is for RSA keys: an Ed25519 key has one size")
    if domain is None:
        from newsletter.config import get_settings

        settings = get_settings()
        domain = settings.dkim_domain or settings.from_.rpartition("@")[2]
    domain = domain.strip().rstrip(".").lower()
    if not domain or "." not in domain:
        raise InvalidInput(f"{domain!r} is not a signing domain: give --domain news.example.org")
    key = generate_key(algorithm.value, bits or 2048)
    _write_new(out, private_pem(key), force)
    name = record_name(selector, domain)
    value = dns_record(key)
    kind = "an Ed25519" if algorithm is Algorithm.ed25519 else f"a {bits or 2048}-bit RSA"
    err_console.print(
        f"Wrote {kind} key to {out} (readable by its owner alone). Publish this DNS TXT record:",
        highlight=False,
    )
    print(f"name:  {name}")
    print(f"value: {value}")
    print(f"zone:  {name}. IN TXT ( {zone_strings(value)} )")
    err_console.print("Then set (the _2 variables instead for a second key, signing twice):")
    print(f"NEWSLETTER_DKIM_DOMAIN={domain}")
    print(f"NEWSLETTER_DKIM_SELECTOR={selector}")
    print(f"NEWSLETTER_DKIM_KEY_FILE={out.resolve()}")


_EXISTS = "{} exists: --force replaces it (and the old key stops working)"


def _write_new(path: Path, data: bytes, force: bool) -> None:
    """Write `path` whole with mode 0600 or not at all; an existing file only with `force`."""
    if path.is_dir():
        raise InvalidInput(f"{path} is a directory: give the key file's name")
    if path.exists() and not force:
        raise InvalidInput(_EXISTS.format(path))
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if force:
            os.replace(temporary, path)
        else:
            # Fails if the file appeared meanwhile: never replaced without --force.
            os.link(temporary, path)
    except FileExistsError:
        raise InvalidInput(
            f"{path} exists: --force replaces it (the old key stops working)"
        ) from None
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
