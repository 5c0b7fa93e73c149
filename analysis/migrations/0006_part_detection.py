# Part detection and discriminativeness (GG'18 §3, §5–6). Written by hand: it depends on
# 0007_net2vec_classification (written concurrently) so the migration graph stays linear; the lead may reorder.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('analysis', '0007_net2vec_classification'),
    ]

    operations = [
        migrations.CreateModel(
            name='PartDetectionStudy',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('inputs', models.CharField(choices=[('object_crops', "Object boxes with context, warped to the input (R-CNN style, GG'18)"), ('whole_images', 'Whole images (the cached activations)')], default='object_crops', max_length=16)),
                ('split', models.CharField(default='train', max_length=16)),
                ('params', models.JSONField(default=dict, help_text='Every parameter of the run (IoU, NMS, GA settings, ...).')),
                ('directory', models.CharField(blank=True, max_length=500)),
                ('n_parts', models.PositiveIntegerField(default=0)),
                ('n_emerged', models.PositiveIntegerField(default=0, help_text='Parts whose GA AP exceeds the AP criterion.')),
                ('n_covered', models.PositiveIntegerField(default=0, help_text='Parts whose GA recall exceeds the coverage one.')),
                ('mean_best_ap', models.FloatField(default=0.0)),
                ('mean_ga_ap', models.FloatField(default=0.0)),
                ('mean_top_ap', models.FloatField(default=0.0)),
                ('mean_all_ap', models.FloatField(default=0.0)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('dataset', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='analysis.dataset')),
                ('layer', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='part_detection_studies', to='analysis.layer')),
                ('run', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='part_detection_studies', to='analysis.run')),
            ],
            options={'ordering': ['-created_at', '-id']},
        ),
        migrations.CreateModel(
            name='PartDetectionResult',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('position', models.PositiveIntegerField(help_text="The part's k in part-<k>.npz.")),
                ('name', models.CharField(help_text='object-part, e.g. car-wheel.', max_length=200)),
                ('n_views', models.PositiveIntegerField(help_text='Object crops (or images) evaluated.')),
                ('n_instances', models.PositiveIntegerField(help_text='Ground-truth part boxes.')),
                ('relative_size', models.FloatField(help_text="Mean part box area / mean object box area (GG'18 Fig. 3).")),
                ('mean_size', models.FloatField(help_text='Mean of part box widths and heights, image pixels.')),
                ('n_detections', models.PositiveIntegerField(default=0)),
                ('best_filter', models.PositiveIntegerField()),
                ('best_ap', models.FloatField()),
                ('best_recall', models.FloatField()),
                ('ga_filters', models.JSONField(default=list)),
                ('ga_ap', models.FloatField()),
                ('ga_recall', models.FloatField()),
                ('ga_history', models.JSONField(default=list, help_text='Best fitness after each generation.')),
                ('top_filters', models.JSONField(default=list)),
                ('top_ap', models.FloatField()),
                ('top_recall', models.FloatField()),
                ('all_ap', models.FloatField()),
                ('all_recall', models.FloatField()),
                ('single_ap', models.JSONField(default=list, help_text='AP of every filter alone, by filter index.')),
                ('single_recall', models.JSONField(default=list)),
                ('curves', models.JSONField(default=dict, help_text='{label: {recall: [...], precision: [...]}}.')),
                ('object_class', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='analysis.concept')),
                ('part', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='analysis.concept')),
                ('study', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='part_results', to='analysis.partdetectionstudy')),
            ],
            options={'ordering': ['-ga_ap', 'name'],
                     'constraints': [models.UniqueConstraint(fields=('study', 'position'), name='unique_part_result')]},
        ),
        migrations.CreateModel(
            name='AblationStudy',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('inputs', models.CharField(choices=[('object_crops', "Object boxes with context, warped to the input (R-CNN style, GG'18)"), ('whole_images', 'Whole images (the cached activations)')], default='object_crops', max_length=16)),
                ('split', models.CharField(default='train', max_length=16)),
                ('score', models.CharField(default='softmax', help_text='softmax probability or logit.', max_length=16)),
                ('sigma_factor', models.FloatField(default=2.0)),
                ('params', models.JSONField(default=dict)),
                ('n_classes', models.PositiveIntegerField(default=0)),
                ('mean_discriminative', models.FloatField(default=0.0, help_text='Discriminative filters per class, on average.')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('dataset', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='analysis.dataset')),
                ('layer', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='ablation_studies', to='analysis.layer')),
                ('run', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='ablation_studies', to='analysis.run')),
            ],
            options={'ordering': ['-created_at', '-id']},
        ),
        migrations.CreateModel(
            name='ClassDiscriminativeness',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('n_images', models.PositiveIntegerField()),
                ('mean_score', models.FloatField(help_text='Mean class score with every filter.')),
                ('deltas', models.JSONField(help_text='δ_j by filter index.')),
                ('sigma', models.FloatField()),
                ('discriminative', models.JSONField(default=list, help_text='Filters with δ_j > k σ, by decreasing δ.')),
                ('delta_discriminative_set', models.FloatField(blank=True, null=True)),
                ('delta_other_set', models.FloatField(blank=True, null=True)),
                ('object_class', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='analysis.concept')),
                ('study', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='class_results', to='analysis.ablationstudy')),
            ],
            options={'ordering': ['object_class__name'],
                     'constraints': [models.UniqueConstraint(fields=('study', 'object_class'), name='unique_class_delta')]},
        ),
        migrations.CreateModel(
            name='PartDiscriminativeness',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=200)),
                ('n_images', models.PositiveIntegerField()),
                ('delta', models.FloatField()),
                ('relative_size', models.FloatField()),
                ('object_class', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='analysis.concept')),
                ('part', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='analysis.concept')),
                ('study', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='part_results', to='analysis.ablationstudy')),
            ],
            options={'ordering': ['-delta', 'name'],
                     'constraints': [models.UniqueConstraint(fields=('study', 'object_class', 'part'), name='unique_part_delta')]},
        ),
    ]
