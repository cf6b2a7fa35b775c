"""The command line. The only module that prints or reads stdin."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
import numpy as np

from .errors import EdgeQwenError


def _set_threads(threads: int | None) -> None:
    from . import set_threads

    if threads is not None:
        try:
            set_threads(threads)
        except EdgeQwenError as e:
            raise EdgeQwenError(f"--threads: {e}") from None


def _status(msg: str) -> None:
    click.echo(click.style(msg, dim=True), err=True)


def _model_path(model_path: str | None) -> str:
    """``-m`` as given, else the embedded default model (said in one line)."""
    if model_path:
        return model_path
    from .loader import default_model_path

    path = default_model_path()
    _status(f"no -m given: using the embedded default model {path.stem} ({path.stat().st_size / 2**20:.0f} MiB)")
    return str(path)


def _load(model_path: str | None, threads: int | None = None):
    from .loader import load

    _set_threads(threads)
    model_path = _model_path(model_path)
    t0 = time.perf_counter()
    progress = None
    if sys.stderr.isatty():
        shown = [None]
        labels = {"read": f"reading {Path(model_path).name}", "repack": "repacking 4-bit weights"}

        def progress(done, total, stage):
            pct = 100 * done // max(total, 1)
            if (stage, pct) != shown[0]:
                shown[0] = (stage, pct)
                click.echo(_dim(f"\r\033[K{labels[stage]}: {pct}%"), nl=False, err=True)
    model = load(model_path, progress=progress)
    if progress:
        click.echo("\r\033[K", nl=False, err=True)
    _status(f"loaded {model_path} ({model.format_name}, {model.weight_bytes() / 2**20:.0f} MiB per token) "
            f"in {time.perf_counter() - t0:.2f}s")
    return model


class _Group(click.Group):
    """Turns EdgeQwenError (and broken input) into one line on stderr and exit 1, unless --debug."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeQwenError as e:
            if ctx.params.get("debug") or os.environ.get("EDGEQWEN_DEBUG"):
                raise
            click.echo(f"edgeqwen: error: {e}", err=True)
            sys.exit(1)
        except BrokenPipeError:  # `edgeqwen info | head`: the reader left; not an error
            sys.stderr.close()
            os._exit(0)
        except KeyboardInterrupt:
            click.echo("\nedgeqwen: interrupted", err=True)
            sys.exit(130)
        except OSError as e:
            if ctx.params.get("debug") or os.environ.get("EDGEQWEN_DEBUG"):
                raise
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            click.echo(f"edgeqwen: error: {where}{e.strerror or e}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.version_option(package_name="edgeqwen")
def main(debug):
    """edgeqwen: Qwen3 language models on a CPU with NumPy and Numba."""
    if debug:
        os.environ["EDGEQWEN_DEBUG"] = "1"


MODEL = click.option("-m", "--model", "model_path", default=None, type=click.Path(),
                     help="Model: a Hugging Face directory or a .gguf file [default: the embedded SmolLM2-135M].")
THREADS = click.option("-t", "--threads", type=int, default=None, help="Worker threads (default: all cores).")


def _kv_cache(ctx, param, value):
    if value:
        os.environ["EDGEQWEN_KV_CACHE"] = value  # read by loader.load


KV_CACHE = click.option("--kv-cache", type=click.Choice(["auto", "f32", "f16"]), default=None, expose_value=False,
                        callback=_kv_cache, help="KV cache storage: f16 halves its memory and attention's reads; "
                        "auto is f16 for quantized weights, f32 for float ones [default: auto].")


@main.command()
@MODEL
@click.argument("prompt", required=False)
@click.option("-n", "--max-tokens", type=int, default=256, show_default=True, help="Tokens to generate at most.")
@click.option("--temperature", type=float, default=None, help="0 = greedy [default: generation_config, else 0].")
@click.option("--top-k", type=int, default=None, help="Keep the k most likely tokens (0 = off).")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling mass.")
@click.option("--min-p", type=float, default=None, help="Drop tokens below min_p x the top probability.")
@click.option("--presence-penalty", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Random seed: same seed, same text.")
@click.option("--chat/--raw", default=True, show_default=True,
              help="Wrap the prompt in the model's chat template, or feed it as raw text.")
@click.option("--think/--no-think", default=True, show_default=True, help="Qwen3 thinking mode (with --chat).")
@click.option("--system", default=None, help="System prompt (with --chat).")
@click.option("--ctx", type=int, default=None, help="Context length (default: prompt + max tokens, at least 4096).")
@THREADS
@KV_CACHE
def generate(model_path, prompt, max_tokens, temperature, top_k, top_p, min_p, presence_penalty, seed, chat,
             think, system, ctx, threads):
    """Stream a completion of PROMPT (read from stdin when omitted or '-')."""
    from .generate import prompt_to_ids, stream_generate

    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    if max_tokens < 1:
        raise EdgeQwenError(f"--max-tokens must be at least 1, got {max_tokens}")
    model = _load(model_path, threads)
    g = model.config.generation
    if temperature is None:
        temperature = (g.temperature or 0.0) if g.do_sample else 0.0
    top_k = g.top_k if top_k is None and temperature else (top_k or 0)
    top_p = g.top_p if top_p is None and temperature else (top_p if top_p is not None else 1.0)
    min_p = g.min_p if min_p is None and temperature else (min_p or 0.0)
    messages = prompt
    if chat:
        messages = [{"role": "user", "content": prompt}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
    ids = prompt_to_ids(model, messages, chat=chat, enable_thinking=think if chat else None)
    if ctx is not None and len(ids) > ctx:
        raise EdgeQwenError(f"prompt of {len(ids)} tokens does not fit the context of {ctx}")
    if len(ids) > model.config.max_position_embeddings:
        raise EdgeQwenError(f"prompt of {len(ids)} tokens exceeds the model's context "
                            f"({model.config.max_position_embeddings})")
    last = None
    for r in stream_generate(model, ids, max_tokens=max_tokens, temperature=temperature, top_k=top_k or 0,
                             top_p=top_p if top_p is not None else 1.0, min_p=min_p or 0.0,
                             presence_penalty=presence_penalty, seed=seed, ctx=ctx):
        click.echo(r.text, nl=False)
        sys.stdout.flush()
        last = r
    click.echo()
    if last is not None:
        _status(f"prompt {last.prompt_tokens} tok, {last.prompt_tps:.1f} tok/s | "
                f"generated {last.generation_tokens} tok, {last.generation_tps:.1f} tok/s | "
                f"ttft {last.ttft:.2f}s | finish: {last.finish_reason}")


CHAT_HELP = """\
/help              this list
/reset             forget the conversation (keeps the system prompt)
/system TEXT       set the system prompt (and reset)
/think, /no_think  alone on a line: switch thinking mode; inside a message: for that message
/stats             numbers for the session and the last reply
/save FILE         write the conversation as JSON
/load FILE         read a conversation saved with /save
/exit              leave (Ctrl-D or Ctrl-C at an empty prompt too)"""


def _dim(text: str) -> str:
    return click.style(text, dim=True)


def _chat_reply(session, text, hide_thinking: bool, show_stats: bool, tty: bool) -> None:
    """Stream one reply to stdout: thinking dimmed (or a one-line indicator), answer plain, stats dim."""
    events = session.turn(text)
    state = None  # "think" | "answer"
    try:
        for ev in events:
            if ev.kind == "notice":
                if state is not None:
                    click.echo()
                click.echo(_dim(f"[{ev.text}]"), err=True)
            elif ev.kind == "think":
                if hide_thinking:
                    if state != "think" and tty:
                        click.echo(_dim("thinking…"), nl=False)
                else:
                    click.echo(_dim(ev.text), nl=False)
                state = "think"
            elif ev.kind == "answer":
                if state == "think":
                    if hide_thinking and tty:
                        click.echo("\r\033[K", nl=False)
                    elif not hide_thinking:
                        click.echo()
                state = "answer"
                click.echo(ev.text, nl=False)
            elif ev.kind == "done":
                click.echo()
                if show_stats:
                    st = ev.stats
                    click.echo(_dim(f"[prefill {st.prefilled} tok ({st.reused} cached) · TTFT {st.ttft:.2f}s · "
                                    f"{st.generated} tok at {st.decode_tps:.1f} tok/s · {st.finish_reason}]"),
                               err=not tty)
            sys.stdout.flush()
    except KeyboardInterrupt:
        events.close()  # keeps the partial reply in the history
        click.echo()
        click.echo(_dim("[interrupted]"), err=True)


def _chat_command(session, line: str) -> bool:
    """Run a slash command; False means leave the chat."""
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd in ("/exit", "/quit", "/bye"):
        return False
    if cmd == "/help":
        click.echo(CHAT_HELP)
    elif cmd == "/reset":
        session.reset()
        click.echo(_dim("[conversation cleared]"))
    elif cmd == "/system":
        session.system = arg or None
        session.reset()
        click.echo(_dim("[system prompt set; conversation cleared]" if arg else "[system prompt removed]"))
    elif cmd == "/think":
        session.enable_thinking = True
        click.echo(_dim("[thinking on]"))
    elif cmd == "/no_think":
        session.enable_thinking = False
        click.echo(_dim("[thinking off]"))
    elif cmd == "/stats":
        s = session.summary()
        click.echo(f"turns {s['turns']} · cache {s['cache_used']}/{s['ctx']} tokens · "
                   f"thinking {'on' if s['thinking'] else 'off'}")
        last = s["last_turn"]
        if last:
            click.echo(f"last reply: prompt {last['prompt_tokens']} tok, prefilled {last['prefilled']} "
                       f"({last['reused']} cached), TTFT {last['ttft']:.2f}s, {last['generated']} tok at "
                       f"{last['decode_tps']:.1f} tok/s, {last['finish_reason']}")
    elif cmd == "/save":
        if not arg:
            raise EdgeQwenError("/save needs a file name")
        session.save(arg)
        click.echo(_dim(f"[saved to {arg}]"))
    elif cmd == "/load":
        if not arg:
            raise EdgeQwenError("/load needs a file name")
        session.load(arg)
        click.echo(_dim(f"[loaded {len(session.turns)} messages from {arg}]"))
    else:
        raise EdgeQwenError(f"unknown command {cmd} (try /help)")
    return True


def _readline_history():
    """Line editing for input(); history kept in the user's state directory. Returns a saver or None."""
    try:
        import readline
    except ImportError:
        return None
    path = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "edgeqwen" / "chat_history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            readline.read_history_file(path)
    except OSError:
        return None
    readline.set_history_length(1000)

    def save(_line):
        try:
            readline.write_history_file(path)
        except OSError:
            pass

    return save


def _read_line(prompt: str) -> str | None:
    """One line from the terminal, or None at end of input; Ctrl-C at the prompt also ends."""
    try:
        return input(prompt)
    except (EOFError, KeyboardInterrupt):
        click.echo()
        return None


@main.command()
@MODEL
@click.option("--ctx", type=int, default=None, help="Context length [default: min(model maximum, 4096)].")
@click.option("--think/--no-think", default=True, show_default=True, help="Qwen3 thinking mode.")
@click.option("--hide-thinking", is_flag=True, help="Show a one-line indicator instead of the thinking text.")
@click.option("--system", default=None, help="System prompt.")
@click.option("--temperature", type=float, default=None)
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--min-p", type=float, default=None)
@click.option("--presence-penalty", type=float, default=None)
@click.option("--seed", type=int, default=None, help="Make the session reproducible.")
@click.option("-n", "--max-tokens", type=int, default=None, help="Tokens per reply at most [default: the context].")
@click.option("--stats/--no-stats", default=True, show_default=True, help="A dim stats line after each reply.")
@THREADS
@KV_CACHE
def chat(model_path, ctx, think, hide_thinking, system, temperature, top_k, top_p, min_p, presence_penalty, seed,
         max_tokens, stats, threads):
    """Chat with a model in the terminal (or answer one piped question)."""
    from .session import ChatSession

    model = _load(model_path, threads)
    model_path = model.path
    session = ChatSession(model, ctx=ctx, system=system, enable_thinking=think, seed=seed, max_tokens=max_tokens,
                          sampling=dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                        presence_penalty=presence_penalty))
    _warm_up(model, session.cache)
    tty_out = sys.stdout.isatty()
    if not sys.stdin.isatty():
        text = sys.stdin.buffer.read().decode("utf-8", errors="replace").strip()
        if not text:
            raise EdgeQwenError("no question on standard input")
        _chat_reply(session, text, hide_thinking, stats, tty_out)
        return
    history = _readline_history()
    click.echo(_dim(f"edgeqwen chat · {Path(model_path).name} · ctx {session.ctx} · thinking "
                    f"{'on' if session.enable_thinking else 'off'} · /help for commands"))
    while True:
        try:
            line = _read_line(">>> ")
            if line and history:
                history(line)
        except UnicodeDecodeError:
            click.echo(_dim("[that input was not valid UTF-8; try again]"), err=True)
            continue
        if line is None:
            break
        line = line.strip()
        if not line:
            continue
        try:
            words = line.split()
            # "/think ..." with more text is a message carrying a soft switch; any other /word is a command
            if words[0].startswith("/") and not (words[0] in ("/think", "/no_think") and len(words) > 1):
                if not _chat_command(session, line):
                    break
                continue
            _chat_reply(session, line, hide_thinking, stats, tty_out)
        except EdgeQwenError as e:
            click.echo(f"edgeqwen: {e}", err=True)


def _warm_up(model, cache=None) -> None:
    """Run the kernels once so first-run JIT compilation shows as a status line, not a slow first reply.

    With ``cache`` given, its first pages are touched too (then it is emptied again).
    """
    t0 = time.perf_counter()
    tty = sys.stderr.isatty()
    if tty:
        click.echo(_dim("preparing kernels (compiled once, then cached)…"), nl=False, err=True)
    cache = cache if cache is not None else model.new_cache(16)
    n = max(1, min(9, cache.ctx - 3))  # eight tokens or more have their own kernels
    model.forward(list(range(n)), cache)
    model.forward([n, n + 1], cache)  # a few tokens (short prompts, batch decode), then one
    model.forward([n + 2], cache)
    cache.reset()
    if tty:
        click.echo("\r\033[K", nl=False, err=True)
    if time.perf_counter() - t0 > 3:
        _status(f"kernels compiled in {time.perf_counter() - t0:.1f}s (cached for next time)")


@main.command()
@MODEL
@click.argument("in_path", metavar="IN.jsonl", type=click.Path(allow_dash=True))
@click.argument("out_path", metavar="OUT.jsonl", type=click.Path(allow_dash=True))
@click.option("-b", "--batch-size", type=int, default=8, show_default=True,
              help="Sequences decoded together (each weight read serves all of them).")
@click.option("-n", "--max-tokens", type=int, default=256, show_default=True, help="Default per request.")
@click.option("--temperature", type=float, default=None, help="Default per request [default: greedy].")
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--min-p", type=float, default=None)
@click.option("--seed", type=int, default=None, help="Default seed for requests without one.")
@click.option("--ctx", type=int, default=None, help="Context per sequence [default: min(model maximum, 4096)].")
@THREADS
@KV_CACHE
def batch(model_path, in_path, out_path, batch_size, max_tokens, temperature, top_k, top_p, min_p, seed, ctx,
          threads):
    """Answer every request of IN.jsonl into OUT.jsonl (resumable; '-' is stdin / stdout).

    \b
    Input lines:  {"id": ..., "prompt": "raw text"} or {"id": ..., "messages": [{"role", "content"}, ...]}
                  with optional max_tokens, temperature, top_k, top_p, min_p, presence_penalty, seed,
                  enable_thinking, stop.
    Output lines: {"id", "text", "thinking"?, "finish_reason", "prompt_tokens", "cached_prompt_tokens",
                  "completion_tokens", "ttft_s", "decode_tps", "total_s"} or {"id", "error", "line"}.
    """
    from .batch import BatchRunner, answered, parse_request

    if in_path == "-":
        lines = sys.stdin.buffer.read().decode("utf-8", errors="replace").splitlines()
    else:
        try:
            lines = Path(in_path).read_bytes().decode("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            raise EdgeQwenError(f"{in_path}: file not found") from None
    done_ids, done_lines = answered(out_path) if out_path != "-" else (set(), set())
    model = _load(model_path, threads)
    runner = BatchRunner(model, batch_size, ctx)
    defaults = dict(max_tokens=max_tokens, temperature=temperature or 0.0, top_k=top_k, top_p=top_p, min_p=min_p,
                    seed=seed)
    if out_path == "-":
        def emit(obj):
            sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
            sys.stdout.flush()
    else:
        fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def emit(obj):  # one write per line, appended: a kill never leaves half a line behind
            os.write(fd, (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))

    requests, errors, seen = [], 0, {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            req = parse_request(line, n, model.tokenizer, defaults, runner.ctx)
        except EdgeQwenError as e:
            if n in done_lines:
                continue
            rid = None
            try:
                rid = json.loads(line).get("id")
            except (json.JSONDecodeError, AttributeError):
                pass
            if rid is not None and json.dumps(rid) in done_ids:
                continue
            emit({"id": rid, "error": str(e), "line": n})
            errors += 1
            continue
        key = json.dumps(req.id)
        if key in seen:
            click.echo(f"edgeqwen: line {n}: duplicate id {req.id!r} (first on line {seen[key]}); skipped", err=True)
            continue
        seen[key] = n
        if key in done_ids:
            continue
        req.index = n
        requests.append(req)
    total = len(requests)
    skipped = len(done_ids & set(seen))
    if skipped:
        _status(f"resuming: {skipped} request(s) already in {out_path}")
    tty = sys.stderr.isatty()
    t0 = time.perf_counter()
    done = 0
    for result in runner.run(requests):
        emit(result)
        done += 1
        if tty:
            rate = runner.generated / max(time.perf_counter() - t0, 1e-9)
            eta = (total - done) * (time.perf_counter() - t0) / done
            click.echo(f"\r\033[K{done}/{total} · {rate:.1f} tok/s · ETA {eta:.0f}s", nl=False, err=True)
    if tty:
        click.echo(err=True)
    elapsed = time.perf_counter() - t0
    _status(f"{done} answered, {errors} error line(s) · {runner.generated} tokens in {elapsed:.1f}s "
            f"({runner.generated / max(elapsed, 1e-9):.1f} tok/s, batch {batch_size}) · "
            f"{runner.prefill_saved} prompt tokens reused from the cache")


@main.command()
@click.option("-m", "--model", "model_path", type=click.Path(), default=None, help="A model to measure.")
@click.option("--preset", type=click.Choice(["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"]), default=None,
              help="Measure a synthetic checkpoint in these shapes (made once, cached).")
@click.option("--format", "fmt", type=click.Choice(["bf16", "int8", "int4", "fp8"]), default="bf16",
              show_default=True, help="Weight format of the --preset checkpoint.")
@click.option("-p", "--prompt", "n_prompt", type=int, default=128, show_default=True, help="Prompt tokens.")
@click.option("-n", "--gen", "n_gen", type=int, default=64, show_default=True, help="Generated tokens.")
@click.option("-r", "--repeats", type=int, default=3, show_default=True)
@click.option("-t", "--threads", "thread_list", default=None, help="Thread counts, e.g. 1,2,4 [default: all cores].")
@click.option("--ctx-depth", type=int, default=0, show_default=True, help="Tokens already in the cache when decoding.")
@click.option("--cold-start/--no-cold-start", default=True, show_default=True,
              help="Also time new processes: first-run JIT compile and warm-cache start to first token.")
@click.option("--vs-llama-cpp", is_flag=True, help="Run llama.cpp on the same weights (GGUF), interleaved.")
@click.option("--json", "json_path", type=click.Path(allow_dash=True), default=None, help="Write results as JSON.")
@click.option("--csv", "csv_path", type=click.Path(allow_dash=True), default=None, help="Write rows as CSV.")
@click.option("--plot", "plot_path", type=click.Path(), default=None, help="Bar chart PNG (needs matplotlib).")
@click.option("--kernels", is_flag=True, help="Benchmark the matvec / batch / prefill kernels of every weight format "
              "on the Qwen3 shapes instead of a model (GB/s and GFLOP/s against the machine's ceilings).")
@click.option("--formats", default=None, help="With --kernels: comma-separated formats (e.g. int4-g64,int4-g64:exact,"
              "Q4_0) [default: all].")
@click.option("--shapes", default=None, help="With --kernels: comma-separated NxK shapes [default: the Qwen3 ones].")
@click.option("--ops", default=None, help="With --kernels: matvec,batch4,batch8,prefill128 [default: all].")
@click.argument("compare", nargs=-1, type=click.Path(exists=True))
@KV_CACHE
def bench(model_path, preset, fmt, n_prompt, n_gen, repeats, thread_list, ctx_depth, cold_start, vs_llama_cpp,
          json_path, csv_path, plot_path, kernels, formats, shapes, ops, compare):
    """Measure prefill and decode speed next to the machine's memory bandwidth.

    With JSON files from earlier runs as arguments (and --plot), chart them together instead.
    """
    import numba

    from . import bench as B

    if kernels:
        _bench_kernels(thread_list, formats, shapes, ops, json_path)
        return

    if compare:
        runs = [json.loads(Path(c).read_text()) for c in compare]
        if not plot_path:
            raise EdgeQwenError("give --plot FILE.png to chart earlier results")
        B.plot(runs, plot_path)
        click.echo(plot_path)
        return
    if model_path and preset:
        raise EdgeQwenError("give either -m MODEL or --preset NAME, not both")
    limit = numba.config.NUMBA_NUM_THREADS
    try:
        threads = [int(t) for t in thread_list.split(",")] if thread_list else [limit]
    except ValueError:
        raise EdgeQwenError(f"-t takes comma-separated thread counts, got {thread_list!r}") from None
    for t in threads:
        if not 1 <= t <= limit:
            raise EdgeQwenError(f"-t {t}: thread counts must be between 1 and {limit} on this machine")
    if min(n_prompt, n_gen, repeats) < 1 or ctx_depth < 0:
        raise EdgeQwenError("-p, -n and -r must be at least 1 and --ctx-depth at least 0")
    if preset:
        _status(f"synthetic {preset} {fmt} (generated once under the user cache directory)")
        model_path = str(B.synthetic_model(preset, fmt))
    model_path = _model_path(model_path)
    cold = {}
    if cold_start:
        _status("timing new processes (first-run compile, then warm cache)…")
        cold = {"fresh_compile": B.cold_start(model_path, fresh_compile=True),
                "warm_cache": B.cold_start(model_path)}
    t0 = time.perf_counter()
    from .loader import load

    model = load(model_path, tokenizer=False)
    load_s = time.perf_counter() - t0
    llama = None
    if vs_llama_cpp:
        from .llamacpp import LlamaCpp, write_gguf

        gtype, etype = B.llama_cpp_type(fmt if preset else model.format_name.split("-")[0].split("/")[-1])
        src = Path(model_path) if not preset else B.synthetic_model(preset, "bf16")
        gguf_path = src / (f"llama-cpp-{gtype}.gguf" if etype == gtype else f"llama-cpp-{gtype}-emb-{etype}.gguf")
        if not gguf_path.exists():
            _status(f"writing {gguf_path.name} for llama.cpp…")
            write_gguf(src, gguf_path, gtype, etype)
    rows = []
    for t in threads:
        bw = None
        numba.set_num_threads(t)
        bw = B.read_bandwidth()
        row = B.bench_config(model, t, n_prompt, n_gen, repeats, ctx_depth, bw)
        if vs_llama_cpp:
            llama = LlamaCpp(gguf_path, t, n_ctx=ctx_depth + n_prompt + n_gen + 8)
            ids = np.random.default_rng(0).integers(0, min(150000, model.config.vocab_size), size=n_prompt)
            llama.run(ids[:8], 2)
            ours, theirs = [], []
            for _ in range(repeats):  # interleaved so drift hits both
                r = B.bench_config(model, t, n_prompt, n_gen, 1, ctx_depth)
                ours.append((r["prefill_tps"], r["decode_tps"]))
                theirs.append(llama.run(ids, n_gen))
            lp = sum(x[0] for x in theirs) / repeats
            ld = sum(x[1] for x in theirs) / repeats
            op = sum(x[0] for x in ours) / repeats
            od = sum(x[1] for x in ours) / repeats
            row.update(llama_cpp_type=gtype, llama_cpp_embedding_type=etype, llama_cpp_prefill_tps=lp,
                       llama_cpp_decode_tps=ld, ratio_prefill=op / lp, ratio_decode=od / ld)
            del llama
        rows.append(row)
    result = {"model": model_path, "model_name": Path(model_path).name, "format": model.format_name,
              "machine": B.machine_facts(), "load_s": load_s, "peak_rss_mib": B.peak_rss_mib(), "cold_start": cold,
              "rows": rows}
    # the table goes to stdout, unless stdout carries --json - / --csv -
    _print_bench(result, sys.stderr if "-" in (json_path, csv_path) else sys.stdout)
    if json_path:
        text = json.dumps(result, indent=2) + "\n"
        sys.stdout.write(text) if json_path == "-" else Path(json_path).write_text(text)
    if csv_path:
        import csv
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
        sys.stdout.write(buf.getvalue()) if csv_path == "-" else Path(csv_path).write_text(buf.getvalue())
    if plot_path:
        B.plot([result], plot_path)


def _bench_kernels(thread_list, formats, shapes, ops, json_path) -> None:
    import numba

    from . import kernel_bench as K
    from .bench import machine_facts, read_bandwidth

    limit = numba.config.NUMBA_NUM_THREADS
    try:
        threads = [int(t) for t in thread_list.split(",")] if thread_list else sorted({1, limit})
        shape_list = ([tuple(int(v) for v in s.lower().split("x")) for s in shapes.split(",")] if shapes
                      else list(K.SHAPES))
    except ValueError:
        raise EdgeQwenError("-t takes thread counts like 1,2 and --shapes NxK pairs like 1024x1024,151936x1024") from None
    fmt_list = formats.split(",") if formats else list(K.FORMATS)
    op_list = ops.split(",") if ops else list(K.OPS)
    for f in fmt_list:
        base = f[:-6] if f.endswith(":exact") else f
        if base not in K.FORMATS:
            raise EdgeQwenError(f"unknown kernel format {f!r} (choose from {', '.join(K.FORMATS)}, "
                                f"a quantized one may end in ':exact')")
    for o in op_list:
        if o not in K.OPS:
            raise EdgeQwenError(f"unknown op {o!r} (choose from {', '.join(K.OPS)})")
    for n, k in shape_list:
        if n < 1 or k < 256 or k % 256:
            raise EdgeQwenError(f"shape {n}x{k}: K must be a positive multiple of 256 (every block format fits)")
    for t in threads:
        if not 1 <= t <= limit:
            raise EdgeQwenError(f"-t {t}: thread counts must be between 1 and {limit} on this machine")
    tty = sys.stderr.isatty()
    result = {"machine": machine_facts(), "runs": []}
    for t in threads:
        numba.set_num_threads(t)
        _status(f"{t} thread(s): measuring read bandwidth and FMA peak…")
        bw, peak = read_bandwidth(), K.fma_peak(t)
        rows = K.bench_kernels(fmt_list, shape_list, op_list, t, bw, peak,
                               progress=(lambda m: click.echo(f"\r\033[K{m}", nl=False, err=True)) if tty else None)
        if tty:
            click.echo("\r\033[K", nl=False, err=True)
        result["runs"].append({"threads": t, "read_bandwidth_gbps": bw / 1e9, "fma_peak_gflops": peak / 1e9,
                               "rows": rows})
        click.echo(K.format_table(rows, bw, peak), file=sys.stderr if json_path == "-" else sys.stdout)
    if json_path:
        text = json.dumps(result, indent=2) + "\n"
        sys.stdout.write(text) if json_path == "-" else Path(json_path).write_text(text)


def _print_bench(r: dict, out) -> None:
    m = r["machine"]
    click.echo(f"{r['model']} · {r['format']} · {r['rows'][0]['bytes_per_token'] / 2**20:.0f} MiB read per token",
               file=out)
    click.echo(f"{m['cpu']} · {m['arch']} · {m['cores']} cores · {' '.join(m['simd'])}", file=out)
    click.echo(f"python {m['python']} · numpy {m['numpy']} · numba {m['numba']} · threading {m['threading_layer']}",
               file=out)
    click.echo(f"load {r['load_s']:.2f}s · peak RSS {r['peak_rss_mib']:.0f} MiB", file=out)
    for name, c in r["cold_start"].items():
        if "error" in c:
            click.echo(f"cold start ({name}): {c['error']}", file=out)
        else:
            click.echo(f"cold start ({name.replace('_', ' ')}): first token after {c['to_first_token_s']:.2f}s "
                       f"(import {c['import_s']:.2f}s, load {c['load_s']:.2f}s, first prefill "
                       f"{c['first_prefill_s']:.2f}s, first decode {c['first_decode_s']:.2f}s)", file=out)
    head = (f"{'threads':>7s} {'depth':>6s} {'prefill tok/s':>16s} {'TTFT s':>7s} {'decode tok/s':>15s} "
            f"{'GB/s':>6s} {'% of read bw':>12s}")
    has_llama = "ratio_decode" in r["rows"][0]
    if has_llama:
        head += f" {'llama.cpp p/d':>15s} {'ratio p/d':>11s}"
    click.echo(head, file=out)
    for row in r["rows"]:
        line = (f"{row['threads']:7d} {row['ctx_depth']:6d} {row['prefill_tps']:9.1f} ± {row['prefill_sd']:4.1f} "
                f"{row['ttft_s']:7.3f} {row['decode_tps']:8.1f} ± {row['decode_sd']:4.1f} {row['decode_gbps']:6.1f} "
                f"{row.get('pct_of_bandwidth', 0):8.0f}% of {row.get('read_bandwidth_gbps', 0):.0f}")
        if has_llama:
            line += (f" {row['llama_cpp_prefill_tps']:7.1f}/{row['llama_cpp_decode_tps']:<6.1f}"
                     f" {row['ratio_prefill']:5.2f}/{row['ratio_decode']:<5.2f}")
        click.echo(line, file=out)


@main.command()
@MODEL
def info(model_path):
    """Print a model's config, weight format, size and tensor count."""
    from .loader import load

    model = load(_model_path(model_path))
    c = model.config
    rows = [
        ("path", model.path),
        ("model_type", c.model_type),
        ("format", model.format_name),
        ("parameters", f"{_param_count(model) / 1e6:.1f} M"),
        ("weights", f"{model.file_bytes / 2**20:.1f} MiB ({model.weight_bytes() / 2**20:.1f} MiB read per token)"),
        ("tensors", str(model.tensor_count)),
        ("layers", str(c.num_hidden_layers)),
        ("hidden / intermediate", f"{c.hidden_size} / {c.intermediate_size}"),
        ("heads q / kv / dim", f"{c.num_attention_heads} / {c.num_key_value_heads} / {c.head_dim}"),
        ("vocab", str(c.vocab_size)),
        ("tied embeddings", str(c.tie_word_embeddings)),
        ("rope_theta", f"{c.rope_theta:g}"),
        ("max context", str(c.max_position_embeddings)),
        ("eos ids", ", ".join(map(str, c.eos_ids()))),
        ("tokenizer", "yes" if model.tokenizer else "none (token ids only)"),
        ("chat template", "yes" if model.tokenizer and model.tokenizer.chat_template else "no"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


def _param_count(model) -> int:
    c = model.config
    n = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
    per_layer = (c.q_dim * c.hidden_size * 2 + c.kv_dim * c.hidden_size * 2 + 3 * c.hidden_size * c.intermediate_size
                 + 2 * c.hidden_size + 2 * c.head_dim)
    return n + c.num_hidden_layers * per_layer + c.hidden_size


@main.command()
@click.option("--preset", type=click.Choice(["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"]),
              default="qwen3-0.6b", show_default=True)
@click.option("--dtype", type=click.Choice(["bf16", "f16", "f32", "fp8"]), default="bf16", show_default=True,
              help="fp8: the official Qwen3 FP8 layout (e4m3 + 128x128 bf16 scale_inv tiles).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.argument("out_dir", type=click.Path())
def synth(preset, dtype, seed, out_dir):
    """Write a random-weight checkpoint in the exact shapes of a real Qwen3 model."""
    from .synth import synth_checkpoint

    with click.progressbar(length=100, label=f"synth {preset} {dtype}", file=sys.stderr) as bar:
        last = [0]

        def progress(done, total):
            pct = int(100 * done / total)
            bar.update(pct - last[0])
            last[0] = pct

        path = synth_checkpoint(out_dir, preset=preset, dtype=dtype, seed=seed, progress=progress)
    click.echo(str(path))


@main.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--bits", type=click.Choice(["4", "8"]), default="4", show_default=True)
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True)
@click.option("--embed-bits", type=click.Choice(["4", "8"]), default=None,
              help="Bits for the embedding / lm_head (default: --bits); 8 keeps them closer to the original.")
def quantize(src, dst, bits, group_size, embed_bits):
    """Convert a bf16/fp16/fp32 or FP8 checkpoint SRC to the MLX int4/int8 layout in DST."""
    from .quantize import quantize_checkpoint

    with click.progressbar(length=1000, label=f"quantize int{bits} g{group_size}", file=sys.stderr) as bar:
        last = [0]

        def progress(done, total):
            step = int(1000 * done / max(total, 1))
            bar.update(step - last[0])
            last[0] = step

        out = quantize_checkpoint(src, dst, int(bits), int(group_size),
                                  int(embed_bits) if embed_bits else None, progress=progress)
    click.echo(str(out))


if __name__ == "__main__":
    main()
