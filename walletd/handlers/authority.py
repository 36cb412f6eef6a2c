"""Who may do what: the table in docs/authority.md, generated from the route declarations
(`@routes(..., auth=...)`) and the operational routes, so it cannot drift from the code.
`python -m walletd.handlers.authority` prints it; tests/e2e/test_authority_doc.py checks that the
document holds exactly this table."""

from __future__ import annotations

from walletd.handlers.endpoint import PRINCIPALS, Endpoint
from walletd.handlers.meta import PUBLIC_ROUTES
from walletd.handlers.routes import ROUTE_TABLES

_OPEN = {"open_service_registration": "only with WALLETD_OPEN_SERVICE_REGISTRATION=1 and no operator key "
                                      "(development)"}


def cells(spec: Endpoint) -> dict[str, str]:
    """One cell per principal: empty (refused), "yes", or what the principal may reach."""
    scope = dict(spec.scope)
    if spec.auth == ("anonymous",):  # open to anyone, whatever credential they hold
        return {principal: "yes" for principal in PRINCIPALS}
    row = {principal: "" for principal in PRINCIPALS}
    for kind in spec.auth:
        principal = "user" if kind == "basic" else kind
        row[principal] = scope.get(principal) or ("yes, with HTTP Basic" if kind == "basic" else "yes")
    if spec.open_when:
        row["anonymous"] = _OPEN[spec.open_when]
    return row


def rows() -> list[tuple[str, str, dict[str, str]]]:
    found = [(f"{spec.method} {spec.path}", spec.summary, cells(spec))
             for table in ROUTE_TABLES for spec, _ in table.entries]
    anyone = {principal: "yes" for principal in PRINCIPALS}
    found += [(f"{method} {path}", summary, anyone) for method, path, summary in PUBLIC_ROUTES]
    return found


def table() -> str:
    lines = ["| route | what | " + " | ".join(PRINCIPALS) + " |", "|---|---|" + "---|" * len(PRINCIPALS)]
    for route, summary, row in rows():
        lines.append(f"| `{route}` | {summary} | " + " | ".join(row[p] for p in PRINCIPALS) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
