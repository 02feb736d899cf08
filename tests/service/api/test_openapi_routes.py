"""The OpenAPI document is built from the app's route table: every served API route is documented, once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route

from service.api.openapi import PREDICT_PATHS, UndocumentedRoute, openapi_document, served_operations
from tests.conftest import serve


@pytest.fixture(scope="module")
def app_with_rollouts(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    state = tmp_path_factory.mktemp("openapi") / "state.sqlite"
    with serve(model_repo, state_path=state) as client:
        yield client


def test_the_document_lists_exactly_the_operations_the_app_serves(app_with_rollouts: Any) -> None:
    document = app_with_rollouts.get("/openapi.json").json()
    documented = {(path, method) for path, item in document["paths"].items() for method in item}

    served = set(served_operations(app_with_rollouts.app.routes))
    predict = {(path.replace("{name}", name), "post") for name in ("digits",) for path in PREDICT_PATHS}

    assert served <= documented
    assert predict <= documented
    assert {("/v1/rollouts/{name}", "put"), ("/v1/rollouts/{name}/rollback", "post")} <= documented
    assert not any(path.startswith("/ui") or path == "/" for path, _ in documented)  # pages are not API


def test_a_served_route_without_an_operation_is_an_error() -> None:
    async def endpoint(request: Any) -> None: ...

    with pytest.raises(UndocumentedRoute, match="GET /v1/secret"):
        openapi_document([Route("/v1/secret", endpoint, methods=["GET"])])
