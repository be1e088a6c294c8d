"""Writing artefacts (pictures, samples, tables, text) into the run folder, from callbacks.

A project's callbacks (``projects/<name>/callbacks.py``, selected in ``conf/callbacks``) write
what a run produces besides metrics and checkpoints with :func:`run_file` (a path to write to)
or :func:`write_run_file` (text or bytes). Both write on the global-zero process only, into
the trainer's ``default_root_dir`` (``${paths.output_dir}``, the Hydra run folder).
"""

from __future__ import annotations

from pathlib import Path

from lightning import Trainer

__all__ = ["run_file", "write_run_file"]


def run_file(trainer: Trainer, name: str) -> Path | None:
    """The path of ``name`` in the run folder, its folder created; None off global zero.

    Args:
        trainer (lightning.Trainer): The running trainer.
        name (str): A relative path, e.g. ``'reconstruction.png'`` or ``'samples/e003.png'``.

    Returns:
        Path | None: Where to write, or None on the processes that must not write.

    Raises:
        ValueError: If ``name`` is absolute or leaves the run folder.

    Example:
        >>> trainer = Trainer(default_root_dir="/tmp/run", logger=False)  # doctest: +SKIP
        >>> run_file(trainer, "curves/psnr.csv")  # doctest: +SKIP
        PosixPath('/tmp/run/curves/psnr.csv')
    """
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"artefact name {name!r} must be a path inside the run folder")
    if not trainer.is_global_zero:
        return None
    path = Path(trainer.default_root_dir) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_run_file(trainer: Trainer, name: str, content: str | bytes) -> Path | None:
    """Writes ``content`` (text or bytes) to ``name`` in the run folder (global zero only).

    Args:
        trainer (lightning.Trainer): The running trainer.
        name (str): A relative path in the run folder.
        content (str | bytes): What to write.

    Returns:
        Path | None: The file written, or None on the other processes.
    """
    path = run_file(trainer, name)
    if path is not None:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return path
