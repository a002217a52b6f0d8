"""The `spex-api` command line: explain, explain-many, serve-local, report, demo.

Exit codes: 0 success, 1 runtime failure (the model or network failed, a cap was hit), 2 bad usage or input
(caught before any query is spent). Heavy modules are imported inside the commands so that
`spex-api explain --dry-run` answers quickly.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(
    name="spex-api",
    help="Explain why an LLM answered what it did: the few prompt-feature interactions that drive its answer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

DEMO_PROMPT = (
    "The restaurant was noisy and the waiter forgot our order, but the pasta was excellent and the dessert "
    "was unforgettable."
)
# Few-shot and completion-style: the local Gemma-3-270M is a small base model that continues text.
DEMO_TEMPLATE = (
    "Decide whether each review is positive. Answer True or False.\n\n"
    "Review: Great food and friendly staff.\nPositive: True\n\n"
    "Review: The soup was cold and the waiter was rude.\nPositive: False\n\n"
    "Review: {content}\nPositive:"
)


MAX_REPORT_BYTES = 512 * 2**20  # a saved explanation at the feature limit (1,000,000) is well below this


class Granularity(str, Enum):
    words = "words"
    sentences = "sentences"
    paragraphs = "paragraphs"


# Options that explain and explain-many share (one definition, one help text).
ProviderOpt = Annotated[Optional[str], typer.Option(help="openai, openai-responses, anthropic, openai-compatible or local (default: openai if OPENAI_API_KEY is set, else local).")]
ModelOpt = Annotated[Optional[str], typer.Option(help="Model name (default: gpt-4o-mini / claude-3-5-haiku-latest / the local Gemma).")]
BaseUrlOpt = Annotated[Optional[str], typer.Option(help="Base URL of an OpenAI-compatible server (or a running local server).")]
FeaturesOpt = Annotated[Granularity, typer.Option(help="What a feature is.")]
ScorerOpt = Annotated[str, typer.Option(help="auto, label-margin, answer-logprob, frequency, semantic (meaning, needs the semantic extra) or similarity (strings) (auto: label-margin when --labels are given).")]
LabelsOpt = Annotated[Optional[str], typer.Option(help="Comma-separated answer labels for label-margin, e.g. True,False.")]
MethodOpt = Annotated[str, typer.Option(help="auto, spex, proxyspex, adaptive (ProxySPEX asked in rounds) or exhaustive.")]
MaxOrderOpt = Annotated[int, typer.Option(min=1, help="Largest interaction order SPEX decodes.")]
CacheDirOpt = Annotated[str, typer.Option(help="Disk cache of paid answers ('' disables it).")]
SeedOpt = Annotated[int, typer.Option(help="random_state for the masking design.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation before spending.")]
BatchOpt = Annotated[bool, typer.Option("--batch", help="Use the provider's Batch API: half price, results within 24 h per round (OpenAI, Anthropic).")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="Log retries, pauses and cache events (-vv: debug).")]
TimeoutOpt = Annotated[float, typer.Option(help="Longest wait in seconds for one answer, retries included (a hung server stops the run).")]
MaxAttemptsOpt = Annotated[int, typer.Option(help="Attempts per answer on transient failures (429, 5xx, timeouts).")]
RpmOpt = Annotated[Optional[float], typer.Option(help="Requests per minute (default: no limit).")]
TpmOpt = Annotated[Optional[float], typer.Option(help="Tokens per minute (default: no limit).")]


def _fail(message: str, code: int) -> typer.Exit:
    # messages quote the user's input: shown as data (never markup), and printable whatever the encoding
    safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
    err.print(Text.assemble(("error:", "bold red"), " ", safe), highlight=False)
    return typer.Exit(code)


def _log_to_stderr(verbose: int) -> None:
    """Show the `spex_api` and `providers` logs on stderr: warnings (retries, pauses, cap refusals) always,
    -v adds info, -vv debug (cache hits and misses). Messages are data, never rich markup."""
    from rich.logging import RichHandler

    global _handler
    if _handler is None:
        _handler = RichHandler(console=err, show_time=False, show_path=False, markup=False)
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    for name in ("spex_api", "providers"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if _handler not in logger.handlers:
            logger.addHandler(_handler)


_handler: Any = None


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'bad input or setup' (exit 2) when raised before any spend."""
    return (ValueError, TypeError, LookupError, FileNotFoundError, PermissionError, IsADirectoryError,
            ImportError)  # an optional extra that is not installed


def _guard(stage: str, fn: Callable[[], Any]) -> Any:
    """Run fn; turn errors into one-line messages with the exit code a shell user expects."""
    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise _fail("interrupted; answers received so far are cached, rerun to resume", 130)
    except Exception as exc:  # noqa: BLE001 - the CLI's job is to report, not to crash with a traceback
        from spex_api.sdk import SpendRefused

        if isinstance(exc, SpendRefused):
            raise _fail(str(exc), 1)
        code = 2 if stage == "input" and isinstance(exc, _input_errors()) else 1
        raise _fail(str(exc) or type(exc).__name__, code)


def _check_utf8(**args: Any) -> None:
    """Refuse command-line text that was not valid UTF-8 (Python keeps such bytes as lone surrogates, which
    cannot be sent to a model nor printed): exit 2 before the plan, naming the argument and the byte."""
    for name, value in args.items():
        for v in value if isinstance(value, list) else [value]:
            if v is None:
                continue
            try:
                str(v).encode("utf-8")
            except UnicodeEncodeError as exc:
                byte = ord(exc.object[exc.start]) - 0xDC00  # surrogateescape keeps byte b as U+DC00 + b
                shown = f"byte 0x{byte:02x}" if 0x80 <= byte <= 0xFF else f"{exc.object[exc.start]!a}"
                raise ValueError(f"{name.replace('_', '-')} is not valid UTF-8 ({shown} at character {exc.start})") from None


def _labels(labels: Optional[str]) -> Optional[list[str]]:
    if labels is None:
        return None
    parts = [p.strip() for p in labels.split(",")]
    if len(parts) < 2 or any(not p for p in parts):
        raise ValueError(f"--labels needs at least two comma-separated labels, got {labels!r}")
    return parts


def _write_outputs(expl: Any, paths: list[Path], top: int) -> None:
    from spex_api.report import save_plot, write_html

    for path in sorted(paths, key=lambda p: p.suffix.lower() != ".json"):  # the JSON result first
        suffix = path.suffix.lower()
        if suffix == ".json":
            expl.save(path)
        elif suffix in (".html", ".htm"):
            write_html(expl, path, k=max(top, 15))
        else:  # .png, .pdf, .svg (checked by _check_out before any spend)
            save_plot(expl, path, k=top)
        err.print(Text(f"wrote {path}"))


def _open_in_browser(path: Path) -> None:
    """Open a written report in the user's browser (only when asked with --open)."""
    import webbrowser

    if not webbrowser.open(path.resolve().as_uri()):
        err.print(Text(f"could not open a browser; the report is at {path.resolve()}"), highlight=False)


def _html_out(paths: list[Path], open_report: bool) -> Optional[Path]:
    """The HTML report --open will show; --open without an .html --out is refused before any spend."""
    html = next((p for p in paths if p.suffix.lower() in (".html", ".htm")), None)
    if open_report and html is None:
        raise ValueError("--open needs an HTML report to open: add --out report.html")
    return html if open_report else None


def _check_out(paths: list[Path]) -> None:
    for path in paths:
        if path.suffix.lower() not in (".json", ".html", ".htm", ".png", ".pdf", ".svg"):
            raise ValueError(f"--out {path}: use a .json, .html, .png, .pdf or .svg file name")
        if not path.parent.exists():
            raise FileNotFoundError(f"--out {path}: folder {path.parent} does not exist")
        if path.is_dir():
            raise IsADirectoryError(f"--out {path} is a folder; give a file name")
        try:  # really write there (permissions, read-only file systems, quotas): a failure after the run is paid
            if path.exists():  # would lose the paid result
                with open(path, "ab"):
                    pass
            else:
                fd, probe = tempfile.mkstemp(dir=path.parent, prefix=".spex-api-write-check-")
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise PermissionError(f"--out {path}: cannot write there ({exc.strerror or exc}); checked before any "
                                  "query is spent") from None


@app.command()
def explain(
    prompt: Optional[str] = typer.Argument(None, help="The prompt text (or use --file)."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Read the prompt from this file."),
    provider: ProviderOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    budget: int = typer.Option(1000, min=2, help="Maximum number of queries, the original answer included."),
    max_cost: Optional[float] = typer.Option(None, min=0.0, help="Hard cap in dollars."),
    features: FeaturesOpt = Granularity.words,
    template: Optional[str] = typer.Option(None, help="Fixed text around the prompt with one {content} slot."),
    scorer: ScorerOpt = "auto",
    labels: LabelsOpt = None,
    method: MethodOpt = "auto",
    max_order: MaxOrderOpt = 5,
    cache_dir: CacheDirOpt = "~/.cache/spex-api",
    seed: SeedOpt = 0,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and estimated cost; send nothing."),
    batch: BatchOpt = False,
    yes: YesOpt = False,
    out_paths: list[Path] = typer.Option([], "--out", "-o", help="Write the explanation: .json, .html or .png (repeatable)."),
    top: int = typer.Option(10, min=1, help="Interactions shown."),
    open_report: bool = typer.Option(False, "--open", help="Open the HTML report (--out x.html) in the browser when written."),
    verbose: VerboseOpt = 0,
    timeout: TimeoutOpt = 120.0,
    max_attempts: MaxAttemptsOpt = 6,
    concurrency: int = typer.Option(8, help="API calls in flight at once."),
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
) -> None:
    """Explain one prompt: plan, show the cost, query the model, print the top interactions."""
    from spex_api import sdk

    _log_to_stderr(verbose)

    def prepare() -> Any:
        _check_utf8(prompt=prompt, __file=file, __provider=provider, __model=model, __base_url=base_url,
                    __template=template, __scorer=scorer, __labels=labels, __method=method, __cache_dir=cache_dir,
                    __out=out_paths)
        if (prompt is None) == (file is None):
            raise ValueError("give the prompt text or --file, not both and not neither")
        try:
            text = file.read_text(encoding="utf-8") if file is not None else prompt
        except UnicodeDecodeError as exc:
            raise ValueError(f"--file {file} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at {exc.start})") from None
        _check_out(out_paths)
        _html_out(out_paths, open_report)
        return sdk.preview(
            text, provider=provider, model=model, base_url=base_url, features=features.value, template=template,
            scorer=scorer, labels=_labels(labels), budget=budget, max_cost=max_cost, method=method,
            max_order=max_order, cache_dir=cache_dir or None, random_state=seed, timeout=timeout,
            max_attempts=max_attempts, concurrency=concurrency, rpm=rpm, tpm=tpm,
            mode="batch" if batch else "interactive",
        )

    pre = _guard("input", prepare)
    if dry_run:
        out.print(pre.renderable())
        out.print("dry run: no query was sent.")
        return
    expl = _guard("run", lambda: sdk.run(pre, confirm=False if yes else None))
    from spex_api.report import print_report

    # Paid for: save first, render second, so a rendering failure can never lose the result.
    _guard("run", lambda: _write_outputs(expl, out_paths, top))
    _guard("run", lambda: print_report(expl, k=top, console=out))
    to_open = _html_out(out_paths, open_report)
    if to_open is not None:
        _open_in_browser(to_open)


def _read_prompts(path: Path) -> list[str]:
    """Prompts from a file: one per line (.txt), or one JSON object per line with a "prompt" string (.jsonl)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at {exc.start})") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix.lower() == ".jsonl":
            import json

            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {number} is not JSON ({exc.msg})") from None
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise ValueError(f'{path} line {number}: expected an object with a "prompt" string')
            prompts.append(item["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise ValueError(f"{path} has no prompts")
    return prompts


@app.command("explain-many")
def explain_many(
    prompts_file: Path = typer.Argument(..., help="Prompts, one per line (.txt) or JSON lines with a \"prompt\" key (.jsonl)."),
    provider: ProviderOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    budget: int = typer.Option(1000, min=2, help="Maximum queries per prompt, its original answer included."),
    max_cost: Optional[float] = typer.Option(None, min=0.0, help="Hard cap in dollars for the whole batch."),
    features: FeaturesOpt = Granularity.words,
    template: Optional[str] = typer.Option(None, help="Fixed text around each prompt with one {content} slot."),
    scorer: ScorerOpt = "auto",
    labels: LabelsOpt = None,
    method: MethodOpt = "auto",
    max_order: MaxOrderOpt = 5,
    cache_dir: CacheDirOpt = "~/.cache/spex-api",
    seed: SeedOpt = 0,
    concurrency: int = typer.Option(4, min=1, help="Prompts explained at once."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Write <n>.json (and with --html <n>.html) per prompt here."),
    html: bool = typer.Option(False, "--html", help="Also write an HTML report per prompt (needs --out-dir)."),
    batch: BatchOpt = False,
    yes: YesOpt = False,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No plan, live table or summary (for scripts); errors still go to stderr."),
    verbose: VerboseOpt = 0,
    timeout: TimeoutOpt = 120.0,
    max_attempts: MaxAttemptsOpt = 6,
    query_concurrency: int = typer.Option(8, help="API calls in flight at once, across the prompts."),
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_queries: Optional[int] = typer.Option(None, min=0, help="Hard cap on the API calls of the whole batch."),
    backend: str = typer.Option("threads", help="threads (this process) or ray: engine work as Ray tasks, every query through one gateway actor (needs the [ray] extra; joins RAY_ADDRESS if set, else starts a local Ray)."),
) -> None:
    """Explain every prompt of a file through one runner (one cache, one rate limit, one dollar cap): a live
    table while it runs, a summary table at the end. Exit 1 if any prompt failed (the others are kept)."""
    from spex_api import sdk

    _log_to_stderr(verbose)

    def prepare() -> list[str]:
        _check_utf8(prompts_file=prompts_file, __provider=provider, __model=model, __base_url=base_url,
                    __template=template, __scorer=scorer, __labels=labels, __method=method, __cache_dir=cache_dir)
        if html and out_dir is None:
            raise ValueError("--html writes into --out-dir; give --out-dir")
        if out_dir is not None and not out_dir.is_dir():
            raise FileNotFoundError(f"--out-dir {out_dir} is not a folder")
        return _read_prompts(prompts_file)

    prompts = _guard("input", prepare)
    kw = dict(provider=provider, model=model, base_url=base_url, features=features.value, template=template,
              scorer=scorer, labels=_guard("input", lambda: _labels(labels)), budget=budget, max_cost=max_cost,
              method=method, max_order=max_order, cache_dir=cache_dir or None, random_state=seed, timeout=timeout,
              max_attempts=max_attempts, rpm=rpm, tpm=tpm, mode="batch" if batch else "interactive")
    results = _guard("input", lambda: sdk.explain_many(
        prompts, concurrency=concurrency, query_concurrency=query_concurrency, return_exceptions=True, confirm=False if yes else None,
        progress=not quiet, backend=backend, max_queries=max_queries, **kw))
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    if out_dir is not None:
        from spex_api.report import write_html

        width = len(str(len(results) - 1))
        for i, expl in enumerate(results):
            if i not in failed:
                stem = out_dir / f"{i:0{width}d}"
                _guard("run", functools.partial(expl.save, stem.with_suffix(".json")))
                if html:
                    _guard("run", functools.partial(write_html, expl, stem.with_suffix(".html")))
        if not quiet:
            err.print(Text(f"wrote {len(results) - len(failed)} explanations to {out_dir}"), highlight=False)
    if failed:
        raise _fail(f"{len(failed)} of {len(results)} prompts failed (their paid answers are cached; rerun to "
                    f"resume): " + "; ".join(f"{i}: {results[i]}" for i in failed[:3]), 1)


@app.command("serve-local")
def serve_local(port: Optional[int] = typer.Option(None, help="Port on 127.0.0.1 (default: any free port).")) -> None:
    """Start the local model server (llama-server + Gemma-3-270M), print its base_url, run until Ctrl-C."""
    import signal
    import threading

    from providers.local import LocalServer

    server = _guard("input", lambda: LocalServer(port=port))
    _guard("run", server.start)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after start (it may reset handlers); works in the background too
        signal.signal(sig, lambda *_: stop.set())
    try:
        out.print(f"local model server running: base_url={server.base_url}  model={server.model}")
        out.print(f"use it with: spex-api explain --base-url {server.base_url} \"your prompt\"   (Ctrl-C stops it)")
        while not stop.wait(0.5):
            if not server.running:
                raise _fail("the local server exited unexpectedly", 1)
    finally:
        server.stop()
        err.print("stopped.")


@app.command()
def report(
    path: Path = typer.Argument(..., help="A saved explanation (.json)."),
    html: Optional[Path] = typer.Option(None, help="Write an HTML report here."),
    png: Optional[Path] = typer.Option(None, help="Write a figure here (.png, .pdf, .svg)."),
    index: str = typer.Option("mobius", help="Index shown: mobius, fourier, shapley, banzhaf, k-sii, fsii, ..."),
    top: int = typer.Option(10, min=1, help="Interactions shown."),
    open_report: bool = typer.Option(False, "--open", help="Open the HTML report (--html) in the browser when written."),
) -> None:
    """Render a saved explanation to the terminal, and optionally to HTML and a figure."""
    from spex_api.engine.explanation import Explanation
    from spex_api.report import print_report, save_plot, write_html

    def load() -> Any:
        _check_utf8(path=path, __html=html, __png=png, __index=index)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        from spex_api.engine.indices import canonical_index

        canonical_index(index)
        if open_report and html is None:
            raise ValueError("--open needs an HTML report to open: add --html report.html")
        if path.is_file() and path.stat().st_size > MAX_REPORT_BYTES:
            raise ValueError(f"{path} is {path.stat().st_size:,} bytes, more than a saved explanation can be "
                             f"({MAX_REPORT_BYTES:,})")
        try:
            return Explanation.load(path)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path} is not a saved spex-api explanation ({exc})") from None

    expl = _guard("input", load)
    _guard("input", lambda: print_report(expl, k=top, index=index, console=out))
    if html is not None:
        _guard("run", lambda: write_html(expl, html, k=max(top, 15), index=index))
        err.print(Text(f"wrote {html}"))
        if open_report:
            _open_in_browser(html)
    if png is not None:
        _guard("run", lambda: save_plot(expl, png, k=top, index=index))
        err.print(Text(f"wrote {png}"))


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("spex-demo"), "--out-dir", help="Where the reports go."),
    budget: int = typer.Option(300, min=2, help="Queries to spend on the local model."),
    open_report: bool = typer.Option(False, "--open", help="Open the HTML report in the browser when written."),
) -> None:
    """Explain a built-in review on the local Gemma model (no key needed); print the table, write reports."""
    from spex_api import sdk
    from spex_api.report import print_report, save_plot, write_html

    def prepare() -> Any:
        out_dir.mkdir(parents=True, exist_ok=True)
        return sdk.preview(
            DEMO_PROMPT, provider="local", template=DEMO_TEMPLATE, scorer="label-margin", labels=["True", "False"],
            budget=budget,
        )

    pre = _guard("input", prepare)
    expl = _guard("run", lambda: sdk.run(pre, confirm=False))
    print_report(expl, console=out)
    html, png, js = out_dir / "report.html", out_dir / "interactions.png", out_dir / "explanation.json"
    _guard("run", lambda: (write_html(expl, html), save_plot(expl, png), expl.save(js)))
    out.print(Text(f"HTML report: {html.resolve()}\nfigure: {png.resolve()}\nexplanation: {js.resolve()}"))
    if open_report:
        _open_in_browser(html)


def main() -> None:  # pragma: no cover - `python -m spex_api.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
