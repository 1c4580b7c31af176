-- EC2 tags on instances and images (cloud/ec2/tags.py); they show in DescribeInstances, so
-- they move the pool's version as VM rows do.
CREATE TABLE IF NOT EXISTS ec2_tags (
    resource TEXT NOT NULL,  -- i-%08x or ami-%08x
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (resource, key)
);
CREATE TRIGGER IF NOT EXISTS ec2_tags_inserted AFTER INSERT ON ec2_tags
    BEGIN UPDATE cloud_pool_version SET n = n + 1; END;
CREATE TRIGGER IF NOT EXISTS ec2_tags_updated AFTER UPDATE ON ec2_tags
    BEGIN UPDATE cloud_pool_version SET n = n + 1; END;
CREATE TRIGGER IF NOT EXISTS ec2_tags_deleted AFTER DELETE ON ec2_tags
    BEGIN UPDATE cloud_pool_version SET n = n + 1; END;
