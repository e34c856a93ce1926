"""Batches made ready on the device ahead of the step that uses them.

Copying a batch to the device and augmenting it launch a hundred small operations; done between two
steps, they leave the GPU waiting. Here a background thread does them up to `depth` batches ahead, on
its own CUDA stream, while the main thread runs the model.
"""
import queue
import threading
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from CPCTrans.data import clips_to_device
from CPCTrans.device import to_device

_END = object()


@dataclass
class DeviceBatch:
    inputs: torch.Tensor  # augmented clips on the device
    labels: torch.Tensor  # on the device
    videos: torch.Tensor  # on the device
    problems: list[str]  # unreadable clips the loader replaced


class DeviceBatches:
    """Iterates the loader's batches as DeviceBatch, `transform(clips, sizes)` applied on the device.

    depth 0 prepares each batch when it is asked for. Otherwise a thread keeps up to `depth` batches
    ready. The consumer's stream waits for each batch's preparation, and its tensors are marked as used
    by that stream so their memory is not handed out again too early. `generator` (the augmentation's)
    is left as it was after the last batch taken, however far ahead the thread has drawn, so that a run
    stopped mid-epoch saves the state from which the rest of the epoch replays exactly. Use in a `with`.
    """

    def __init__(self, loader, transform, device: torch.device, depth: int, generator: torch.Generator | None = None):
        self.loader = loader
        self.transform = transform
        self.device = device
        self.generator = generator
        self.taken_state = generator.get_state() if generator is not None else None
        self.stop = threading.Event()
        self.ready = queue.Queue(maxsize=max(depth, 1))
        # Made here, not in the thread: starting an epoch's iterator draws from the global torch RNG.
        self.batches = iter(loader)
        self.thread = None
        if depth > 0:
            self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
            self.thread = threading.Thread(target=self._produce, daemon=True)
            self.thread.start()

    def __len__(self) -> int:
        return len(self.loader)

    def _prepare(self, batch) -> tuple[DeviceBatch, torch.Tensor | None]:
        clips, sizes, labels, videos, problems = batch
        # Labels and video indices come unpinned when the loader hands out JPEG bytes (--decode gpu).
        prepared = DeviceBatch(self.transform(*clips_to_device(clips, sizes, self.device)),
                               to_device(labels, self.device), to_device(videos, self.device), problems)
        return prepared, self.generator.get_state() if self.generator is not None else None

    def _produce(self) -> None:
        try:
            with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
                for batch in self.batches:
                    prepared, state = self._prepare(batch)
                    event = None
                    if self.stream is not None:
                        event = torch.cuda.Event()
                        event.record(self.stream)
                    if not self._put((prepared, state, event)):
                        return
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(error)
            return
        self._put(_END)

    def _put(self, item) -> bool:
        """Waits for room in the queue; False once the consumer has closed."""
        while not self.stop.is_set():
            try:
                self.ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self) -> DeviceBatch:
        if self.thread is None:
            prepared, state = self._prepare(next(self.batches))
        else:
            item = self.ready.get()
            if item is _END:
                raise StopIteration
            if isinstance(item, BaseException):
                raise item
            prepared, state, event = item
            if event is not None:
                consumer = torch.cuda.current_stream(self.device)
                consumer.wait_event(event)
                for tensor in (prepared.inputs, prepared.labels, prepared.videos):
                    tensor.record_stream(consumer)
        self.taken_state = state
        return prepared

    def close(self) -> None:
        if self.thread is not None:
            self.stop.set()
            self.thread.join()
        if self.generator is not None:
            self.generator.set_state(self.taken_state)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
