"""The README's worked example, run exactly as written against a live `walletd serve` (a real
port, a real PostgreSQL database), the way a newcomer pastes it: into an interactive shell, from
the clone holding `.walletd/operator-key` (twice in a row), from a terminal that exported another
WALLETD_DATA_DIR, and from one that exported WALLETD_OPERATOR_KEY."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import OPERATOR_KEY, REPO_ROOT, ServeProcess

START = "<!-- worked-example:"
END = "<!-- /worked-example -->"
README_URL_LINE = "B=http://127.0.0.1:8010"


def readme_example() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    marked = text[text.index(START):text.index(END)]
    block = re.search(r"```sh\n(.*?)```", marked, re.S)
    assert block is not None, "the worked example is no longer a ```sh block between its markers"
    return block.group(1)


@pytest.fixture
async def server(database_url):
    serve = await ServeProcess(database_url).start()
    yield serve
    await serve.stop()


@pytest.fixture
def paste_dir():
    """Where the newcomer stands: the clone, with the data directory `make run` made."""
    path = Path(tempfile.mkdtemp(prefix="walletd-readme-"))
    (path / ".walletd").mkdir()
    (path / ".walletd" / "operator-key").write_text(OPERATOR_KEY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def paste(shell: list[str], script: str, cwd: Path, **exported: str) -> tuple[int, str]:
    """Feed the block to an interactive shell on stdin, as a terminal paste does (history
    expansion on, no rc files). The terminal has only the variables the newcomer exported (make
    test runs with WALLETD_DATA_DIR set, which a fresh terminal does not have)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WALLETD_DATA_DIR", "WALLETD_OPERATOR_KEY")}
    env.update({"PS1": "", "PS2": "", "PROMPT": "", "PROMPT2": ""}, **exported)
    proc = await asyncio.create_subprocess_exec(*shell, cwd=cwd, env=env, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate((script + "\nexit\n").encode()), 120)
    return proc.returncode, out.decode()


def assert_clean_run(output: str) -> None:
    assert "returned error" not in output, output  # curl --fail-with-body on any 4xx/5xx
    for problem in ("null", "Traceback", "not found", "curl:"):
        assert problem not in output, (problem, output)
    # what `field` says when an answer lacks a field (the shell also echoes the pasted source)
    assert not re.search(r"(empty value|no \S+) in \{", output), output
    assert re.search(r"^status paid$", output, re.M), output
    # 100 deposited - 1 commission - 10 transferred - 5 withdrawn - 0.1 commission
    assert "wallets.balance 84.0000000000 9.2000000000 0.0000000000" in output, output


async def test_the_readme_example_runs_clean_twice_in_bash(server, paste_dir):
    script = readme_example()
    assert script.count(README_URL_LINE + "\n") == 1
    script = script.replace(README_URL_LINE, f"B={server.url}")
    outputs = []
    for _ in range(2):
        code, output = await paste(["bash", "--norc", "--noprofile", "-i"], script, paste_dir)
        assert code == 0, output
        assert_clean_run(output)
        outputs.append(output)
    names = [re.search(r"register (alice_\d+)", output).group(1) for output in outputs]
    assert names[0] != names[1]  # a second paste makes its own users instead of hitting 409s


async def test_the_readme_example_runs_clean_in_zsh(server, paste_dir):
    """zsh is the default shell on macOS; it treats `#` lines and `?` in words differently."""
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed here: the README example was not tried in zsh")
    script = readme_example().replace(README_URL_LINE, f"B={server.url}")
    code, output = await paste(["zsh", "-f", "-i"], script, paste_dir)
    assert code == 0, output
    assert_clean_run(output)


async def test_the_readme_example_runs_clean_in_a_posix_shell(server, paste_dir):
    """`sh`-like shells (bash in POSIX mode) run the example too."""
    script = readme_example().replace(README_URL_LINE, f"B={server.url}")
    code, output = await paste(["bash", "--posix", "--norc", "-i"], script, paste_dir)
    assert code == 0, output
    assert_clean_run(output)


async def test_the_readme_example_finds_the_key_of_another_data_directory(server, paste_dir):
    """`make run` with WALLETD_DATA_DIR elsewhere; the second terminal exported the same."""
    elsewhere = Path(tempfile.mkdtemp(prefix="walletd-data-"))
    try:
        (elsewhere / "operator-key").write_text(OPERATOR_KEY)
        (paste_dir / ".walletd" / "operator-key").write_text("not-the-key-" + "x" * 24)
        script = readme_example().replace(README_URL_LINE, f"B={server.url}")
        code, output = await paste(["bash", "--norc", "--noprofile", "-i"], script, paste_dir,
                                   WALLETD_DATA_DIR=str(elsewhere))
        assert code == 0, output
        assert_clean_run(output)
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


async def test_the_readme_example_uses_an_exported_operator_key(server, paste_dir):
    """walletd started with WALLETD_OPERATOR_KEY (no key file); the second terminal exported it."""
    (paste_dir / ".walletd" / "operator-key").unlink()
    script = readme_example().replace(README_URL_LINE, f"B={server.url}")
    code, output = await paste(["bash", "--norc", "--noprofile", "-i"], script, paste_dir,
                               WALLETD_OPERATOR_KEY=OPERATOR_KEY)
    assert code == 0, output
    assert_clean_run(output)
