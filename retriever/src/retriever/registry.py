"""The collections on disk: one folder each under the data folder, named after the collection.

A folder is created whole or not at all (it is built under a hidden temporary name and renamed into place), and
deleted by renaming it to a hidden name first, so a crash never leaves half a collection under a real name.
Hidden folders (names starting with a dot) are leftovers of such crashes and are removed on open.

Not thread-safe: the service changes the registry from its event loop only (the slow parts of a create or a
delete run on a thread, the dictionary updates do not).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

from retriever.collection import DB_FILE, Collection, IndexPolicy
from retriever.schemas import COLLECTION_NAME
from retriever.store import CollectionConfig

__all__ = ["Registry"]

logger = logging.getLogger(__name__)


class Registry:
    def __init__(self, data_dir: Path, policy: IndexPolicy, *, read_only: bool = False) -> None:
        self.data_dir = data_dir
        self.policy = policy
        self.read_only = read_only  # a read replica: opens the writer's collections, changes no file
        self.collections: dict[str, Collection] = {}

    def folders(self) -> dict[str, Path]:
        """The collection folders on disk now, by name (hidden ones, being created or deleted, left out)."""
        if not self.data_dir.is_dir():
            return {}
        return {
            folder.name: folder
            for folder in sorted(self.data_dir.iterdir())
            if not folder.name.startswith(".")
            and folder.is_dir()
            and COLLECTION_NAME.match(folder.name)
            and (folder / DB_FILE).exists()
        }

    def open_all(self) -> dict[str, str]:
        """Open every collection in the data folder (the writer creates the folder if needed, and removes
        leftovers of crashes). Returns the ones that could not be opened, with the reason; the others are ready."""
        if not self.read_only:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            for folder in sorted(self.data_dir.iterdir()):
                if folder.name.startswith(".") and folder.is_dir():
                    logger.info("removing a leftover folder", extra={"folder": str(folder)})
                    shutil.rmtree(folder, ignore_errors=True)
        errors: dict[str, str] = {}
        for folder in self.folders().values():
            try:
                collection = Collection.open(folder, self.policy, read_only=self.read_only)
            except Exception as exc:
                logger.exception("cannot open collection", extra={"collection": folder.name})
                errors[folder.name] = str(exc) or type(exc).__name__
                continue
            if collection.name != folder.name:
                collection.close()
                errors[folder.name] = f"its database names it '{collection.name}'; rename the folder back"
                continue
            self.collections[folder.name] = collection
        return errors

    def names(self) -> list[str]:
        return sorted(self.collections)

    def get(self, name: str) -> Collection | None:
        return self.collections.get(name)

    def build(self, config: CollectionConfig) -> Collection:
        """Create the collection's folder (slow part: call from a thread); :meth:`add` makes it visible."""
        final = self.data_dir / config.name
        if final.exists():
            raise FileExistsError(f"{final} already exists")
        staging = self.data_dir / f".creating-{config.name}-{uuid.uuid4().hex}"
        collection = Collection.create(staging, config, self.policy)
        collection.close()
        staging.rename(final)
        return Collection.open(final, self.policy)

    def add(self, collection: Collection) -> None:
        self.collections[collection.name] = collection

    def remove(self, name: str) -> Collection | None:
        """Forget a collection (from the event loop); :meth:`destroy` then deletes its files."""
        return self.collections.pop(name, None)

    def destroy(self, collection: Collection) -> None:
        """Close the collection and delete its folder (slow part: call from a thread)."""
        collection.close()
        trash = self.data_dir / f".deleting-{collection.name}-{uuid.uuid4().hex}"
        collection.folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    def flush_all(self) -> None:
        for collection in list(self.collections.values()):
            try:
                collection.flush()
            except Exception:
                logger.exception("could not write the index file", extra={"collection": collection.name})

    def close_all(self) -> None:
        for collection in list(self.collections.values()):
            try:
                collection.close()
            except Exception:
                logger.exception("could not close the collection", extra={"collection": collection.name})
        self.collections.clear()
