"""``tessera pki``: make the consortium CA, issue and revoke certificates, list what exists.

Registered by the main CLI with ``app.add_typer(pki_cmd.app, name="pki")``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tessera.cli._common import console, friendly_errors
from tessera.core import pki
from tessera.core.errors import PkiError

app = typer.Typer(help="Consortium PKI: CA, certificates for coordinator, nodes and analysts, CRL.")

DirOpt = Annotated[Path, typer.Option("--dir", help="PKI directory (holds ca.pem, crl.pem, nodes/...).")]
KindOpt = Annotated[str, typer.Option("--kind", help="coordinator, node or analyst.")]
NameOpt = Annotated[str, typer.Option("--name", help="Identity name: letters, digits, '-', '_', '.'.")]


@app.command("init")
@friendly_errors
def init(
    pki_dir: DirOpt,
    consortium: Annotated[str, typer.Option("--consortium", help="Consortium name.")] = "tessera-dev",
    days: Annotated[int, typer.Option("--days", help="CA validity in days.")] = 3650,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CA.")] = False,
) -> None:
    """Create the consortium CA (ca.pem, ca.key with mode 0600) and an empty signed CRL."""
    path = pki.init_ca(pki_dir, consortium=consortium, days=days, force=force)
    console.print(f"CA for [bold]{consortium}[/] written to {path}; keep ca.key offline.")


@app.command("issue")
@friendly_errors
def issue(
    pki_dir: DirOpt,
    kind: KindOpt,
    name: NameOpt,
    role: Annotated[
        str | None, typer.Option("--role", help="Analysts only: admin, analyst or auditor.")
    ] = None,
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 365,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Coordinator only: DNS name or IP (repeatable)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing certificate.")] = False,
) -> None:
    """Issue a certificate and key for a coordinator, node or analyst."""
    hosts = tuple(host) if host else ("localhost", "127.0.0.1")
    if host and kind != "coordinator":
        raise PkiError("--host applies to coordinator certificates only")
    issued = pki.issue(pki_dir, kind=kind, name=name, role=role, days=days, hosts=hosts, force=force)
    console.print(
        f"{issued.kind} certificate for [bold]{issued.name}[/] (serial {issued.serial:x}, "
        f"valid until {issued.not_after:%Y-%m-%d %H:%M} UTC): {issued.cert_path}, key {issued.key_path}"
    )
    if kind == "coordinator":
        console.print(
            f"it is valid for {', '.join(hosts)} only: nodes and analysts must dial one of these names "
            "(give every name with --host)"
        )


@app.command("request")
@friendly_errors
def request(
    pki_dir: DirOpt,
    kind: KindOpt,
    name: NameOpt,
    role: Annotated[
        str | None, typer.Option("--role", help="Analysts only: admin, analyst or auditor.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """On the node (or analyst/coordinator machine): make a private key and a signing request for
    the CA. The key stays here; send only the .csr file."""
    from tessera.core.pki.csr import make_request

    made = make_request(pki_dir, kind=kind, name=name, role=role, force=force)
    console.print(f"private key {made.key_path} (0600): it stays on this machine")
    console.print(f"signing request {made.csr_path}: send it to the consortium CA, which runs")
    console.print(f"  tessera pki sign --dir CA_DIR --csr {made.csr_path.name}")
    console.print(
        f"then put the certificate it returns at {made.key_path.with_suffix('.pem')}, with ca.pem and crl.pem"
    )


@app.command("sign")
@friendly_errors
def sign(
    pki_dir: DirOpt,
    csr: Annotated[Path, typer.Option("--csr", help="The signing request made by `tessera pki request`.")],
    out: Annotated[Path | None, typer.Option("--out", help="Also write the certificate here.")] = None,
    days: Annotated[int, typer.Option("--days", help="Validity in days.")] = 365,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Coordinator only: DNS name or IP (repeatable)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing certificate.")] = False,
) -> None:
    """At the CA: check a signing request and issue its certificate (no private key involved)."""
    from tessera.core.pki.csr import sign_request

    issued = sign_request(pki_dir, csr, days=days, hosts=tuple(host) if host else None, force=force)
    if out is not None:
        out.write_bytes(issued.cert_path.read_bytes())
    console.print(
        f"{issued.kind} certificate for [bold]{issued.name}[/] (serial {issued.serial:x}, valid until "
        f"{issued.not_after:%Y-%m-%d %H:%M} UTC): {out or issued.cert_path}"
    )
    console.print("send it back with ca.pem and crl.pem; the private key never came here")


@app.command("revoke")
@friendly_errors
def revoke(pki_dir: DirOpt, kind: KindOpt, name: NameOpt) -> None:
    """Put a certificate on the CRL; a running coordinator refuses it from its next call on."""
    serial = pki.revoke(pki_dir, kind=kind, name=name)
    console.print(f"revoked {kind} certificate {name} (serial {serial:x})")


@app.command("list")
@friendly_errors
def list_(pki_dir: DirOpt) -> None:
    """Show every issued certificate with its serial, expiry and revocation state."""
    now = dt.datetime.now(dt.UTC)
    table = Table(title=f"certificates in {pki_dir}")
    for column in ("kind", "name", "role", "serial", "valid until (UTC)", "state"):
        # Serials are 40 hex digits: fold rather than truncate, an operator may need to copy one.
        table.add_column(column, overflow="fold")
    for info in pki.list_certs(pki_dir):
        state = "revoked" if info.revoked else ("expired" if info.expired(now) else "valid")
        table.add_row(
            info.kind,
            info.name,
            info.role or "-",
            f"{info.serial:x}",
            f"{info.not_after:%Y-%m-%d %H:%M}",
            state,
        )
    console.print(table)
