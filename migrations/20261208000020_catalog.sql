-- The operating system of a scanned instance, as UForge names it (its `distribution`): hammr's
-- `scan list` and `image info` print it. Unknown (NULL, all three) for images registered
-- without `--os`. Names and architectures are the UForge schema's enumerations.
ALTER TABLE scanned_instances
    ADD COLUMN os_name TEXT CHECK (os_name IN ('CentOS', 'Debian', 'Fedora Core', 'OpenSUSE',
        'Oracle Linux', 'RedHat Enterprise Linux', 'Scientific Linux', 'SUSE Linux Enterprise Server',
        'Ubuntu', 'Windows')),
    ADD COLUMN os_version TEXT CHECK (os_version ~ '^[A-Za-z0-9._-]{1,32}$'),
    ADD COLUMN os_arch TEXT CHECK (os_arch IN ('i386', 'i586', 'i686', 'noarch', 'x86_64')),
    ADD CONSTRAINT scanned_instances_os_whole
        CHECK ((os_name IS NULL) = (os_version IS NULL) AND (os_name IS NULL) = (os_arch IS NULL));
