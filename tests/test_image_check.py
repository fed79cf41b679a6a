"""The image check's reading of the Dockerfile and the build context, and its diagnosis: a
change to the Dockerfile must change what is checked, and a missing library must be named
with the package that ships it. (The build itself runs in `make image-check`, as root.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.imagecheck import diagnose
from scripts.imagecheck.build import copy_sources
from scripts.imagecheck.dockerfile import (
    DockerfileError,
    context_files,
    ignored,
    parse,
    parse_dockerignore,
)

REPO = Path(__file__).resolve().parent.parent

SAMPLE = """\
# syntax comment
FROM python:3.11-slim-bookworm
ENV A=1 \\
    B="two words" \\
    C=${A}-x
ENV LEGACY value with spaces
RUN apt-get update \\
    # a comment inside a continued RUN is dropped
    && apt-get install -y libatomic1
WORKDIR /app
USER wakeful
HEALTHCHECK --interval=30s --timeout=5s CMD curl -f http://127.0.0.1:${PORT}/health || exit 1
CMD ["python", "server.py"]
"""


def test_instructions_continuations_env_and_forms():
    parsed = parse(SAMPLE)
    assert parsed.base_image == "python:3.11-slim-bookworm"
    assert parsed.env() == {"A": "1", "B": "two words", "C": "1-x", "LEGACY": "value with spaces"}
    run = next(i for i in parsed.instructions if i.keyword == "RUN")
    assert run.command() == [
        "/bin/sh",
        "-c",
        "apt-get update && apt-get install -y libatomic1",
    ]
    assert run.line == 7
    assert parsed.user() == "wakeful"
    assert parsed.cmd() == ["python", "server.py"]
    check = parsed.healthcheck()
    assert check is not None
    assert check.options == {"interval": "30s", "timeout": "5s"}
    # Shell form: ${PORT} is left for the shell to expand at run time.
    assert check.command[:2] == ["/bin/sh", "-c"]
    assert "${PORT}" in check.command[2]


def test_an_instruction_the_check_cannot_follow_fails_it():
    with pytest.raises(DockerfileError, match="ADD"):
        parse("FROM python:3.11-slim-bookworm\nADD https://example.org/x /x\n")
    with pytest.raises(DockerfileError, match="multi-stage"):
        parse("FROM python:3.11-slim-bookworm\nFROM python:3.11-slim-bookworm\n")


def test_the_repository_dockerfile_installs_what_the_driver_links_against():
    parsed = parse((REPO / "Dockerfile").read_text())
    installs = " ".join(i.argument for i in parsed.instructions if i.keyword == "RUN")
    assert "libatomic1" in installs
    assert "chromium-headless-shell" in installs
    assert parsed.user() == "wakeful"
    assert parsed.env()["DATA_DIR"] == "/app/data"


def test_dockerignore_patterns_and_exceptions():
    rules = parse_dockerignore("tests\n**/__pycache__\n*.egg-info\n.env.*\n!.env.example\n")
    assert ignored("tests", rules)
    assert ignored("tests/e2e/test_x.py", rules)
    assert ignored("bot/engines/__pycache__/x.pyc", rules)
    assert ignored("wakeful.egg-info/PKG-INFO", rules)
    assert ignored(".env.production", rules)
    assert not ignored(".env.example", rules)
    assert not ignored("bot/tests_helper.py", rules)  # `tests` is anchored at the root
    assert not ignored("server.py", rules)


def test_the_image_gets_the_code_and_not_the_tests_or_benches():
    rules = parse_dockerignore((REPO / ".dockerignore").read_text())
    sent = context_files(REPO, rules)
    assert "server.py" in sent
    assert "bot/engines/whatsapp/bridge.js" in sent
    assert "migrations/env.py" in sent
    assert not [p for p in sent if p.startswith(("tests/", "bench/", ".git/", ".venv/"))]


def test_copy_lands_files_like_docker(tmp_path: Path):
    context = tmp_path / "context"
    (context / "pkg").mkdir(parents=True)
    (context / "a.toml").write_text("a")
    (context / "b.txt").write_text("b")
    (context / "pkg" / "m.py").write_text("m")
    (context / "secret.env").write_text("s")
    rootfs = tmp_path / "rootfs"
    sent = context_files(context, parse_dockerignore("*.env\n"))
    copy_sources(context, sent, ["a.toml", "b.txt"], "/app/", rootfs)
    assert (rootfs / "app/a.toml").read_text() == "a"
    assert (rootfs / "app/b.txt").read_text() == "b"
    copy_sources(context, sent, ["."], "/app/", rootfs)
    assert (rootfs / "app/pkg/m.py").read_text() == "m"
    assert not (rootfs / "app/secret.env").exists()
    copy_sources(context, sent, ["pkg"], "/lib/", rootfs)
    assert (rootfs / "lib/m.py").exists()
    with pytest.raises(Exception, match=r"secret\.env"):
        copy_sources(context, sent, ["secret.env"], "/app/", rootfs)


def test_a_missing_library_is_named_with_its_package():
    ldd = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibatomic.so.1 => not found\n"
        "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n"
    )
    node = "/usr/local/lib/python3.11/site-packages/playwright/driver/node"
    [missing] = diagnose.missing_from_ldd(node, ldd)
    assert missing.soname == "libatomic.so.1"
    assert "`libatomic1`" in missing.advice()
    assert node in missing.advice()

    log = (
        "INFO starting\n"
        f"{node}: error while loading shared libraries: libatomic.so.1: cannot open shared "
        "object file: No such file or directory\n"
        "ERROR Connection closed while reading from the driver\n"
    )
    assert diagnose.missing_from_log(log) == [diagnose.MissingLibrary("libatomic.so.1", node)]


@pytest.mark.parametrize(
    ("soname", "package"),
    [
        ("libatomic.so.1", "libatomic1"),
        ("libnss3.so", "libnss3"),
        ("libgbm.so.1", "libgbm1"),
        ("libasound.so.2", "libasound2"),
        ("libxcb-dri3.so.0", "libxcb-dri3-0"),
    ],
)
def test_debian_library_package_names(soname: str, package: str):
    assert diagnose.debian_package_for(soname) == package


def test_the_cmd_can_be_given_a_platforms_variables():
    from scripts.imagecheck.__main__ import arguments

    args = arguments(["--env", "SIMULATOR_WEIGHT=real", "--env", "LOG_LEVEL=DEBUG=x"])
    # As `docker run -e`: the first = splits, the rest is the value.
    assert dict(args.env) == {"SIMULATOR_WEIGHT": "real", "LOG_LEVEL": "DEBUG=x"}


@pytest.mark.parametrize(
    "bad", ["SIMULATOR_WEIGHT", "1X=a", "A-B=c", "=x", "PORT=9", "ADMIN_TOKEN=t"]
)
def test_a_bad_env_option_stops_the_check_naming_it(bad: str, capsys: pytest.CaptureFixture[str]):
    from scripts.imagecheck.__main__ import arguments

    with pytest.raises(SystemExit) as stopped:
        arguments(["--env", bad])
    assert stopped.value.code == 2
    assert "--env" in capsys.readouterr().err
