"""Settings: ``broker.toml`` plus ``BROKER_<SECTION>_<KEY>`` environment overrides.

One module per group of sections (:mod:`.sections`, :mod:`.outputs`, :mod:`.identity`,
:mod:`.scan`) and one that loads and validates a file (:mod:`.loading`); everything public is
importable from ``broker.config``.
"""

from broker.config.identity import LDAPSection, OIDCSection, VendorsSection
from broker.config.loading import (
    Config,
    Settings,
    config_path,
    load_config,
    render_default_config,
    settings_from,
)
from broker.config.outputs import (
    SYSLOG_FACILITIES,
    ApprovalsSection,
    MetricsSection,
    NotifySection,
    SiemSection,
)
from broker.config.scan import ScanSection
from broker.config.sections import (
    DEFAULT_CONFIG,
    MAX_WORKERS,
    BrokerSection,
    HTTPSection,
    LogSection,
    PolicySection,
    RecordingSection,
    SSHSection,
    VaultSection,
    WebProxySection,
    default_workers,
)

__all__ = [
    "DEFAULT_CONFIG",
    "MAX_WORKERS",
    "SYSLOG_FACILITIES",
    "ApprovalsSection",
    "BrokerSection",
    "Config",
    "HTTPSection",
    "LDAPSection",
    "LogSection",
    "MetricsSection",
    "NotifySection",
    "OIDCSection",
    "PolicySection",
    "RecordingSection",
    "SSHSection",
    "ScanSection",
    "Settings",
    "SiemSection",
    "VaultSection",
    "VendorsSection",
    "WebProxySection",
    "config_path",
    "default_workers",
    "load_config",
    "render_default_config",
    "settings_from",
]
