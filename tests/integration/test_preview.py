"""``aam-dcl preview CONNECTOR``: the first page of each table, nothing published.

Against the demo connectors (no connectors file) and against the local Salesforce server,
whose refused credentials make one clear line and never show the secret.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from click.testing import Result

from tests.fakes.salesforce import CLIENT_ID, FakeSalesforce, add_crm_objects, seed
from tests.support import invoke_cli

SECRET = "CANARY-preview-secret"


async def cli(args: list[str], env: dict[str, str]) -> Result:
    # No Redis is needed: REDIS_URL points nowhere, so a preview that touched Redis would fail.
    return await invoke_cli(args, {"REDIS_URL": "redis://127.0.0.1:1/0", **env})


@pytest.fixture
async def sf() -> AsyncIterator[FakeSalesforce]:
    async with FakeSalesforce(client_secret=SECRET, refresh_token="r", page_size=5) as fake:
        add_crm_objects(fake)
        seed(fake, opportunities=12, accounts=3)
        yield fake


def connectors_file(tmp_path: Path, sf: FakeSalesforce) -> Path:
    path = tmp_path / "connectors.yaml"
    path.write_text(
        "connectors:\n"
        "  - name: crm\n"
        "    type: salesforce\n"
        "    options:\n"
        f"      login_url: {sf.login_url}\n"
        f"      client_id: {CLIENT_ID}\n"
        "      client_secret: ${SF_SECRET}\n"
        "      objects: [Opportunity, Account]\n"
    )
    return path


async def test_preview_of_a_demo_connector_shows_schema_and_rows() -> None:
    result = await cli(["preview", "salesforce", "--rows", "2", "--json"], {})
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    tables = {t["table"]: t for t in report["tables"]}
    opportunities = tables["opportunities"]
    assert opportunities["primary_key"] == ["opportunity_id"]
    assert {"name": "amount", "type": "numeric"} in opportunities["columns"]
    assert len(opportunities["rows"]) == 2
    assert opportunities["rows_on_first_page"] > 2


async def test_preview_of_salesforce_reads_the_first_page_of_each_object(
    sf: FakeSalesforce, tmp_path: Path
) -> None:
    env = {"AAM_CONNECTORS_FILE": str(connectors_file(tmp_path, sf)), "SF_SECRET": SECRET}
    result = await cli(["preview", "crm"], env)
    assert result.exit_code == 0, result.output
    assert "table opportunity (primary key: Id)" in result.output
    assert "first page: 5 rows" in result.output
    assert "Amount: numeric" in result.output
    assert SECRET not in result.output


async def test_refused_credentials_are_one_line_without_the_secret(
    sf: FakeSalesforce, tmp_path: Path
) -> None:
    wrong = "CANARY-wrong-secret"
    env = {"AAM_CONNECTORS_FILE": str(connectors_file(tmp_path, sf)), "SF_SECRET": wrong}
    result = await cli(["preview", "crm"], env)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert "Traceback" not in result.output
    assert wrong not in result.output


async def test_an_unknown_connector_lists_the_known_ones() -> None:
    result = await cli(["preview", "zoho"], {})
    assert result.exit_code == 1
    assert "no connector 'zoho'" in result.output
    assert "salesforce" in result.output
