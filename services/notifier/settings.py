"""The notifier's settings (``EXPORT_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from services.notifier.mailer import longest_send_seconds
from services.notifier.send_round import DEFAULT_SEND_BUDGET_SECONDS
from shared.settings import CommonSettings, default_replica_id

#: How much longer than one email's longest send the finish lease is when the SMTP settings make that send longer
#: than the default lease and the lease is not set.
DEFAULT_LEASE_MARGIN_SECONDS = 60.0


class NotifierSettings(CommonSettings):
    """Settings of the notifier service."""

    smtp_host: str = Field(default="127.0.0.1", description="SMTP server host.")
    smtp_port: int = Field(default=25, ge=1, le=65535, description="SMTP server port.")
    smtp_security: str = Field(
        default="none", pattern="^(none|starttls|tls)$", description="none, starttls, or tls (implicit TLS)."
    )
    smtp_ca_file: str | None = Field(
        default=None, description="CA bundle that signs the SMTP server's certificate, if not a public CA."
    )
    smtp_username: str | None = Field(default=None, description="SMTP user, when the server needs auth.")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password (never logged).")
    smtp_sender: str = Field(default="member-export@localhost", description="From address of notifications.")
    smtp_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="SMTP timeout: bounds each attempt at an email as a whole (connecting, TLS, login, sending), "
        "and each exchange within it (at most an hour: it feeds a timer and the socket's timeout).",
    )
    smtp_max_attempts: int = Field(default=8, ge=1, description="Attempts per email before it is recorded failed.")
    run_link_base_url: str | None = Field(
        default=None, description="Base URL of run pages; emails link to <base>/runs/<run id> when set."
    )
    notifier_stuck_after_seconds: float = Field(
        default=3600.0, gt=0, description="A run with no event for this long is failed as stuck."
    )
    notifier_sweep_seconds: float = Field(
        default=30.0, gt=0, description="How often stuck runs are looked for and unsent emails retried."
    )
    notifier_missed_digest_threshold: int = Field(
        default=3,
        ge=1,
        description="More missed runs of one definition than this at once (one poll or sweep): one digest email "
        "and one missed_digest webhook event instead of one each.",
    )
    notifier_webhook_max_attempts: int = Field(
        default=10, ge=1, description="Attempts per webhook notification before it is given up."
    )
    notifier_webhook_backoff_initial_seconds: float = Field(
        default=5.0, gt=0, description="Longest wait before a failed webhook's 2nd attempt (doubling each time)."
    )
    notifier_webhook_backoff_max_seconds: float = Field(
        default=900.0, gt=0, description="Longest wait between two attempts of a webhook notification."
    )
    notifier_delivery_log_days: float = Field(
        default=30.0,
        ge=0,
        description="Days the member delivery log keeps a batch's outcome (pruned by the sweep); 0 turns the log off.",
    )
    notifier_finish_lease_seconds: float = Field(
        default=600.0,
        ge=1,
        le=86_400,
        description="A run's finish (failure policy, final webhook and emails, counts) is done by the one replica "
        "that claims it (renewed before each run's finish); another replica (an event of the run again, or its "
        "sweep) takes a claim over once it is this old: its holder died. The sweep also finishes the runs final "
        "this long whose finish no one did. Longer than one email's longest send (SMTP attempts x timeout, each "
        "attempt bounded as a whole, and the backoff between them), or a slow finish would be taken over and done "
        "twice.",
    )
    notifier_send_budget_seconds: float = Field(
        default=DEFAULT_SEND_BUDGET_SECONDS,
        gt=0,
        le=240,
        description="The time a poll's handling, and a sweep, may spend sending notifications (emails and webhooks: "
        "none begun with less than 1 s left, each attempt cut to what is left); what is left is sent by the next "
        "sweeps. Both run on the consumer's thread: with the sweep's budget beside a poll's, they stay within the "
        "consumer's poll interval.",
    )
    notifier_replica_id: str = Field(
        default_factory=default_replica_id,
        min_length=1,
        max_length=200,
        description="This replica's name in the runs' finish claims and its finishes' notification claims "
        "(default: host name and process id; unique per running replica: two replicas of one name would both do "
        "a finish, though each of its emails and webhooks goes out once: a replica takes back at once only its "
        "name's notification claims made before its process started).",
    )
    metrics_port: int = Field(default=9404, ge=0, le=65535, description="Port of /metrics; 0 turns it off.")

    @model_validator(mode="after")
    def _lease_outlasts_an_email(self) -> NotifierSettings:
        """The finish lease must outlast the longest send of one email its settings allow: else a replica still
        sending a finish's email has the finish taken over by another, which sends it again."""
        longest = longest_send_seconds(self.smtp_max_attempts, self.smtp_timeout_seconds)
        if (
            "notifier_finish_lease_seconds" not in self.model_fields_set
            and self.notifier_finish_lease_seconds <= longest
        ):
            # Not set: the default follows SMTP settings that make one email's send longer than it, rather than
            # refusing a configuration that started before the lease existed.
            self.notifier_finish_lease_seconds = longest + DEFAULT_LEASE_MARGIN_SECONDS
        if self.notifier_finish_lease_seconds <= longest:
            raise ValueError(
                f"notifier_finish_lease_seconds ({self.notifier_finish_lease_seconds:g} s) must exceed the longest "
                f"send of one email, {longest:g} s: smtp_max_attempts ({self.smtp_max_attempts}) x "
                f"smtp_timeout_seconds ({self.smtp_timeout_seconds:g} s) and the backoff between attempts: raise "
                "EXPORT_NOTIFIER_FINISH_LEASE_SECONDS or lower EXPORT_SMTP_MAX_ATTEMPTS / EXPORT_SMTP_TIMEOUT_SECONDS"
            )
        return self
