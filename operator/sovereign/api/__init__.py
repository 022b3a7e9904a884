"""Pydantic models of the SovereignStack resource; the CRD in ``crds/`` is generated from them.

The bottom layer: every other layer imports from here, this imports from none of them.
Read a stack with ``parse_stack(body)`` (it runs every rule the CRD has, and raises
``InvalidStackError`` with one ``FieldError`` per problem); build status with the
``SovereignStackStatus`` family and dump it with ``model_dump(mode="json", exclude_none=True)``.
"""

from sovereign.api.models import (
    API_VERSION,
    CATEGORY,
    CRD_NAME,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    VERSION,
    AccessMode,
    Application,
    ApplicationStatus,
    Autoscaling,
    CacheLayout,
    CapacityType,
    Condition,
    ConditionStatus,
    ConditionType,
    ConsolidationPolicy,
    DataStore,
    DataStoreStatus,
    DeletionPolicy,
    Egress,
    Enforcement,
    Engine,
    EnvVar,
    ExistingSettings,
    Exposure,
    GpuSpec,
    KarpenterSettings,
    LoadFormat,
    ModelCache,
    ModelCacheStatus,
    ModelResources,
    ModelSource,
    ModelSpec,
    ModelStatus,
    NodeClassRef,
    NodePool,
    NodePoolLimits,
    NodePoolStatus,
    ObjectMeta,
    Provisioner,
    Residency,
    ResidencyViolation,
    Resources,
    S3Store,
    SecretRef,
    SovereignStack,
    SovereignStackSpec,
    SovereignStackStatus,
    VolumeStore,
)
from sovereign.api.types import parse_quantity
from sovereign.api.validation import FieldError, InvalidStackError, load_documents, parse_stack, validate_document

__all__ = [name for name in dir() if not name.startswith("_") and name not in {"models", "types", "validation"}]
