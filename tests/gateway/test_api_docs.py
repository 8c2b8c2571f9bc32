"""docs/api.md says what the code serves: its generated blocks match the OpenAPI document and topics."""

import re

from gateway import apidocs
from gateway.openapi import openapi_document
from schemas.events import PAYLOADS


def test_checked_in_api_docs_are_current() -> None:
    current = apidocs.DOC.read_text()
    assert apidocs.render(current) == current, "docs/api.md is stale: run `python -m gateway.apidocs`"
    assert apidocs.main(["--check"]) == 0


def test_every_route_schema_and_topic_is_documented() -> None:
    text = apidocs.DOC.read_text()
    doc = openapi_document()
    for path, item in doc["paths"].items():
        for method in item:
            assert f"### {method.upper()} `{path}`" in text, (method, path)
    for name in doc["components"]["schemas"]:
        assert f"#### {name}\n" in text, name
    for topic, model in PAYLOADS.items():
        assert f"| `{topic}` |" in text and f"#### {model.__name__}\n" in text, topic
    anchors = {name.lower() for name in re.findall(r"^#### (\w+)$", text, re.M)}
    links = set(re.findall(r"\]\(#(\w+)\)", text))
    assert links <= anchors, links - anchors
    assert "../shared" not in text and "CONTRACT.md" not in text


def test_a_changed_route_makes_the_doc_stale() -> None:
    current = apidocs.DOC.read_text()
    tampered = current.replace("`validation_error`: `details` names every bad field", "something else", 1)
    assert tampered != current
    assert apidocs.render(tampered) == current  # regenerating restores what the code says


def test_readme_links_the_api_docs_and_nothing_outside_the_repository() -> None:
    readme = (apidocs.DOC.parents[1] / "README.md").read_text()
    assert "](docs/api.md)" in readme
    assert "../shared" not in readme and "CONTRACT.md" not in readme
