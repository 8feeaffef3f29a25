"""The hospital's directory (LDAP / Active Directory): who is in which group (issue #20)."""
