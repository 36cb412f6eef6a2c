"""docs/api.md, the API reference the README links, keeps up with the routes walletd serves:
every route has a section naming each of its parameters, and every response field is described."""

from __future__ import annotations

import re
import typing

from pydantic import BaseModel

from tests.conftest import JWT_SECRET, REPO_ROOT, SECRETS_KEY
from walletd.app import create_app
from walletd.config import Settings
from walletd.handlers.routes import ROUTE_TABLES

DOC = (REPO_ROOT / "docs" / "api.md").read_text()


def section(method: str, path: str) -> str:
    heading = f"### `{method} {path}`"
    assert heading in DOC, f"docs/api.md has no section {heading}"
    rest = DOC.split(heading, 1)[1]
    return re.split(r"\n##", rest, maxsplit=1)[0]


def field_names(model: type[BaseModel]) -> set[str]:
    """The model's fields and those of the models nested in it (lists, optionals)."""
    names = set()
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
        for inner in [info.annotation, *typing.get_args(info.annotation)]:
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                names |= field_names(inner)
    return names


def test_every_endpoint_has_a_section_naming_its_parameters():
    for table in ROUTE_TABLES:
        for spec, _ in table.entries:
            text = section(spec.method, spec.path)
            fields = spec.params.model_fields.items() if spec.params else ()
            for name in (info.alias or name for name, info in fields):  # the name on the wire
                assert f"`{name}`" in text, f"{spec.method} {spec.path}: parameter {name} undocumented"


def test_every_response_field_is_described():
    for table in ROUTE_TABLES:
        for spec, _ in table.entries:
            for name in field_names(spec.response) if spec.response else ():
                assert f"`{name}`" in DOC, f"{spec.method} {spec.path}: response field {name} undocumented"


def test_operational_routes_are_documented_too():
    settings = Settings(database_url="postgresql://unused/unused", jwt_secret=JWT_SECRET, secrets_key=SECRETS_KEY)
    app = create_app(settings, settings.database_url, settings.jwt_secret)  # routes only; nothing connects
    served = {(route.method, route.resource.canonical) for route in app.router.routes()
              if route.method != "HEAD" and not route.resource.canonical.startswith("/static/")}
    for method, path in served:
        documented = f"`{method} {path}`" in DOC
        assert documented, f"docs/api.md does not mention {method} {path}"


def test_the_readme_links_the_reference_in_this_repository():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "](docs/api.md)" in readme
    assert "../shared" not in readme
