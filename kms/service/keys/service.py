"""``KMSService``: the one object the API and the operator commands call, made of its parts.

The parts, each a module of this package: ``TrustedRows`` (reading, MAC-checking, caching and
sealing rows), ``KeyMaterial`` (unwrapping and caching secrets), ``UseLimits`` (encryptions
counted against each version's limit, decryptions tallied), ``KeyLifecycle`` (create, change,
rotate, delete), ``KeyOperations`` (the cryptographic operations, single and batch) and
``KeyMaintenance`` (whole-keystore checks and re-keying) and ``KeyAliases`` (names that stand for
keys). The key-state rules they apply are pure
functions in ``rules``. ``KMSService.from_settings`` is the one way to build it: the app, every
operator command and the tests use it, so no setting is dropped on one of the paths.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from kms.service.cache import KeyMaterialCache, KeyRowCache
from kms.service.keyring import Keyring
from kms.service.keys.aliases import KeyAliases
from kms.service.keys.generations import Generations
from kms.service.keys.lifecycle import KeyLifecycle
from kms.service.keys.limits import UseLimits
from kms.service.keys.maintenance import KeyMaintenance
from kms.service.keys.material import KeyMaterial
from kms.service.keys.operations import KeyOperations
from kms.service.keys.trust import TrustedRows
from kms.settings import Settings
from kms.store.records import KeyRepository, utc_now


class KMSService:
    """Every rule about keys; views only translate HTTP to these calls and back.

    The methods are its parts' own, named here once so that callers need not know which part
    does what.
    """

    def __init__(
        self,
        trust: TrustedRows,
        lifecycle: KeyLifecycle,
        operations: KeyOperations,
        limits: UseLimits,
        maintenance: KeyMaintenance,
        aliases: KeyAliases,
    ) -> None:
        """Use ``from_settings``; this only names the parts' methods."""
        self.trust = trust
        self.lifecycle = lifecycle
        self.operations = operations
        self.limits = limits
        self.maintenance = maintenance
        self.aliases = aliases
        # The lifecycle.
        self.create_key = lifecycle.create_key
        self.get_key = lifecycle.get_key
        self.key_info = lifecycle.key_info
        self.ensure_key = lifecycle.ensure_key
        self.list_keys = lifecycle.list_keys
        self.list_page = lifecycle.list_page
        self.list_versions = lifecycle.list_versions
        self.update_key = lifecycle.update_key
        self.enable_key = lifecycle.enable_key
        self.disable_key = lifecycle.disable_key
        self.delete_key = lifecycle.delete_key
        self.cancel_deletion = lifecycle.cancel_deletion
        self.destroy_due = lifecycle.destroy_due
        self.trim_key = lifecycle.trim_key
        self.rotate_key = lifecycle.rotate_key
        self.rotate_due = lifecycle.rotate_due
        self.count_rotating_keys = lifecycle.count_rotating_keys
        self.recreate_key = lifecycle.recreate_key
        self.list_rotations = lifecycle.list_rotations
        # Aliases.
        self.resolve_alias = aliases.resolve_alias
        self.create_alias = aliases.create_alias
        self.update_alias = aliases.update_alias
        self.delete_alias = aliases.delete_alias
        self.list_aliases = aliases.list_aliases
        # The cryptographic operations.
        self.encrypt = operations.encrypt
        self.encrypt_batch = operations.encrypt_batch
        self.decrypt = operations.decrypt
        self.decrypt_batch = operations.decrypt_batch
        self.generate_data_key = operations.generate_data_key
        self.generate_data_key_batch = operations.generate_data_key_batch
        self.rewrap = operations.rewrap
        self.rewrap_batch = operations.rewrap_batch
        self.re_encrypt = operations.re_encrypt
        self.sign = operations.sign
        self.sign_batch = operations.sign_batch
        self.verify = operations.verify
        self.verify_batch = operations.verify_batch
        self.mac = operations.mac
        self.verify_mac = operations.verify_mac
        self.public_key = operations.public_key
        self.random_bytes = operations.random_bytes
        self.check_batch_size = operations.check_batch_size
        # Use counts.
        self.flush_use = limits.flush_use
        self.use_totals = limits.use_totals
        # The whole keystore.
        self.check_ready = maintenance.check_ready
        self.master_key = maintenance.master_key
        self.key_counts_by_state = maintenance.key_counts_by_state
        self.check_integrity = maintenance.check_integrity
        self.upgrade_rows = maintenance.upgrade
        self.read_epoch = maintenance.read_epoch
        self.rekey = maintenance.rekey
        self.count_versions = maintenance.count_versions

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        repository: KeyRepository,
        keyring: Keyring,
        *,
        cache: KeyMaterialCache | None = None,
        rows: KeyRowCache | None = None,
        generations: Generations | None = None,
        clock: Callable[[], datetime] = utc_now,
        after_generation: Callable[[str], None] | None = None,
    ) -> KMSService:
        """The service with the configured limits.

        ``cache`` holds loaded key material (none: nothing is kept, as for an operator command);
        ``rows`` caches key rows for the operations (``kms.cache_staleness_ms``; none: every
        operation reads its row). ``generations`` is what this node has seen of each key (none:
        this service's memory alone; the app and the operator commands pass the node's journal,
        kms.service.keys.generations). ``clock`` gives "now" (tests move it instead of sleeping);
        ``after_generation`` is a test hook, see ``KeyLifecycle``.
        """
        cache = KeyMaterialCache(0) if cache is None else cache
        trust = TrustedRows(repository, keyring, cache, rows, generations)
        material = KeyMaterial(trust, keyring, cache)
        lifecycle = KeyLifecycle(
            repository,
            keyring,
            trust,
            material,
            max_versions=settings.max_versions,
            min_pending_days=settings.deletion_min_pending_days,
            default_max_encryptions=settings.max_encryptions_per_version,
            clock=clock,
            after_generation=after_generation,
            list_deadline=settings.list_deadline_ms / 1000,
        )
        limits = UseLimits(
            repository,
            default_limit=settings.max_encryptions_per_version,
            encryption_block=settings.encryption_block,
            rotate_from=lifecycle.rotate_from,
            read=trust.read,
            clock=clock,
        )
        operations = KeyOperations(
            repository,
            trust,
            material,
            limits,
            verify_max_versions=settings.verify_max_versions,
            max_batch_items=settings.max_batch_items,
            clock=clock,
        )
        return cls(
            trust,
            lifecycle,
            operations,
            limits,
            KeyMaintenance(repository, keyring, trust),
            KeyAliases(repository, trust, lifecycle.list_page, clock),
        )
