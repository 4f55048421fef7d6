"""The operations (activate, rollback, downgrade, reverify, fleet), each written once as
named steps over a runner passed in (`runner`): Prefect's, or plain calls."""
