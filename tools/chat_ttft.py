#!/usr/bin/env python
"""Time to first token across the turns of one chat, to show it does not decay with history.

    python tools/chat_ttft.py -m models/qwen3-0.6b-synth --turns 10 --reply 32 -t 2
"""

import argparse

import numba

import edgeqwen
from edgeqwen.session import ChatSession

MESSAGES = ["Hi!", "What's the capital of France?", "And of Italy?", "Which is bigger?", "Why?",
            "Tell me a fact about Rome.", "And Paris?", "Which would you visit?", "Thanks.", "Bye!",
            "One more?", "Last one."]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--reply", type=int, default=32, help="tokens per reply")
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args()
    numba.set_num_threads(a.threads)
    model = edgeqwen.load(a.model)
    s = ChatSession(model, ctx=4096, seed=0, max_tokens=a.reply, enable_thinking=False, sampling={"temperature": 0})
    list(ChatSession(model, ctx=64, max_tokens=2).turn("warm-up"))
    print(f"{'turn':>4s} {'prompt':>7s} {'prefilled':>9s} {'cached':>7s} {'TTFT s':>7s} {'decode tok/s':>12s}")
    for i in range(a.turns):
        st = [e for e in s.turn(MESSAGES[i % len(MESSAGES)]) if e.kind == "done"][0].stats
        print(f"{i + 1:4d} {st.prompt_tokens:7d} {st.prefilled:9d} {st.reused:7d} {st.ttft:7.3f} {st.decode_tps:12.1f}")


if __name__ == "__main__":
    main()
